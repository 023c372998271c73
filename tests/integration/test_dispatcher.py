"""The media worker pool with stand-in worker processes: start, pick, scale, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from sipserver.edge.dispatcher import FULL, MediaWorker, WorkerPool, WorkerPoolSettings
from sipserver.rtp.framelink import LinkRecord

pytestmark = pytest.mark.integration

WORKER = (sys.executable, str(Path(__file__).with_name("link_worker.py")), "--capacity", "2")


def make_pool(tmp_path: Path, **kw: float) -> tuple[WorkerPool, list[tuple[str, set[int]]]]:
    lost: list[tuple[str, set[int]]] = []

    def on_record(worker: MediaWorker, record: LinkRecord) -> None:
        pass

    def on_lost(worker: MediaWorker, calls: set[int]) -> None:
        lost.append((worker.worker_id, calls))

    # The stand-in workers have no SIP stack: no OPTIONS health checks for them.
    settings = WorkerPoolSettings(
        link_path=str(tmp_path / "run" / "link.sock"),
        restart_backoff=0.1,
        health_interval=0,
        **kw,
    )
    pool = WorkerPool(settings, on_record=on_record, on_worker_lost=on_lost, command=WORKER)
    return pool, lost


async def test_pick_least_loaded_then_full(tmp_path: Path) -> None:
    pool, _ = make_pool(tmp_path, min_workers=2, max_workers=2)
    await pool.start()
    try:
        await pool.wait_ready(2, timeout=20)
        first = pool.pick()
        assert isinstance(first, MediaWorker) and first.capacity == 2
        pool.reserve(first)
        second = pool.pick()
        assert isinstance(second, MediaWorker) and second is not first
        for worker in pool.workers:
            while worker.free:
                pool.reserve(worker)
        assert pool.pick() is FULL
        pool.release(first)
        assert pool.pick() is first
    finally:
        await pool.stop()


async def test_scales_up_when_spare_capacity_runs_out(tmp_path: Path) -> None:
    pool, _ = make_pool(tmp_path, min_workers=1, max_workers=3, spare_calls=1)
    await pool.start()
    try:
        await pool.wait_ready(1, timeout=20)
        worker = pool.pick()
        assert isinstance(worker, MediaWorker)
        pool.reserve(worker)
        pool.reserve(worker)  # capacity 2 used up: a second worker is started
        await pool.wait_ready(2, timeout=20)
        assert len(pool.workers) == 2
    finally:
        await pool.stop()


async def test_dead_worker_is_reported_and_restarted(tmp_path: Path) -> None:
    pool, lost = make_pool(tmp_path, min_workers=2, max_workers=2)
    await pool.start()
    try:
        await pool.wait_ready(2, timeout=20)
        victim, other = pool.workers
        victim.calls.update({1, 2})
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGKILL)
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost == [(victim.worker_id, {1, 2})]
        assert other.up  # the other worker is untouched
        await pool.wait_ready(2, timeout=20)
        assert pool.restarts == 1
        assert victim.worker_id not in {w.worker_id for w in pool.workers}
    finally:
        await pool.stop()


async def test_a_stopped_worker_is_found_on_the_frame_link_and_replaced(tmp_path: Path) -> None:
    """Stand-in workers answer the pool's PINGs from their event loop; a SIGSTOPped one sends
    nothing more and is declared lost after link_timeout, the other is left alone."""
    pool, lost = make_pool(
        tmp_path, min_workers=2, max_workers=2, link_timeout=1.0, link_ping_interval=0.2
    )
    await pool.start()
    try:
        await pool.wait_ready(2, timeout=20)
        await asyncio.sleep(2.0)  # ten ping rounds: workers that answer are never lost
        assert lost == []
        victim, other = pool.workers
        victim.calls.add(7)
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGSTOP)
        for _ in range(400):  # generous; the bound is link_timeout + link_ping_interval
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost == [(victim.worker_id, {7})]
        assert other.up
        await pool.wait_ready(2, timeout=20)
        assert victim.process.returncode is not None  # killed, not left stopped
    finally:
        await pool.stop()


async def test_hung_pjsua2_worker_is_detected_by_options_and_replaced(tmp_path: Path) -> None:
    # Real pjsua2 workers: one is frozen (SIGSTOP): its process and socket stay, but its SIP
    # stack stops answering OPTIONS, so the pool kills and replaces it.
    lost: list[str] = []
    settings = WorkerPoolSettings(
        link_path=str(tmp_path / "run" / "link.sock"),
        min_workers=2,
        max_workers=2,
        rtp_port_start=35000,
        rtp_ports_per_worker=40,
        health_interval=0.5,
        health_failures=2,
        restart_backoff=0.1,
        link_timeout=0,  # the OPTIONS check alone (the frame link's is tested below)
    )
    pool = WorkerPool(
        settings,
        on_record=lambda worker, record: None,
        on_worker_lost=lambda worker, calls: lost.append(worker.worker_id),
    )
    await pool.start()
    try:
        await pool.wait_ready(2, timeout=30)
        await asyncio.sleep(1.5)  # healthy workers answer: nothing is lost
        assert lost == []
        victim = pool.workers[0]
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGSTOP)
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.1)
        assert lost == [victim.worker_id]
        await pool.wait_ready(2, timeout=30)
        assert victim.worker_id not in {w.worker_id for w in pool.workers}
    finally:
        await pool.stop()
