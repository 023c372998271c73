"""cancel_and_wait: absorbs the task's cancellation, never the caller's own."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sipserver.tasks import cancel_and_wait


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _stubborn(release: asyncio.Event, log: list[str]) -> None:
    """Takes a while to honour a cancel (like a job finishing its teardown)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append("cancel seen")
        await release.wait()
        log.append("teardown done")
        raise


async def test_cancels_the_task_and_waits_for_it() -> None:
    release, log = asyncio.Event(), []
    task = asyncio.create_task(_stubborn(release, log))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cancel_and_wait(task))
    await _settle()
    assert log == ["cancel seen"] and not waiter.done()  # still waiting for the teardown
    release.set()
    await waiter  # returns normally: the task's CancelledError is absorbed
    assert task.cancelled() and log == ["cancel seen", "teardown done"]


async def test_the_callers_own_cancellation_propagates() -> None:
    # The teardown idiom `with suppress(CancelledError): await task` would swallow this and let
    # the caller go on to "after" although it was cancelled.
    release, log = asyncio.Event(), []
    task = asyncio.create_task(_stubborn(release, log))
    await asyncio.sleep(0)

    async def caller() -> None:
        await cancel_and_wait(task)
        log.append("after")

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0)
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert outer.cancelled() and "after" not in log
    assert task.done()


async def test_works_in_cleanup_that_runs_because_of_an_earlier_cancellation() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    steps: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(3600)
        finally:  # cancelled: the cleanup still ends its helper task, then finishes
            await cancel_and_wait(task)
            steps.append("cleanup finished")

    outer = asyncio.create_task(handler())
    await asyncio.sleep(0)
    outer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await outer
    assert steps == ["cleanup finished"] and task.cancelled()


async def test_an_error_the_task_raised_propagates() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)


async def test_the_callers_cancellation_propagates_when_the_task_absorbs_it() -> None:
    """A task that swallows its cancellation and returns: the caller's own cancel, handed on to
    the task while the caller waits, must still reach the caller."""
    release, log = asyncio.Event(), []

    async def absorbing() -> None:
        while not release.is_set():  # every cancel is swallowed until released
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        log.append("absorbed")  # returns normally

    task = asyncio.create_task(absorbing())
    await asyncio.sleep(0)

    async def caller() -> None:
        await cancel_and_wait(task)
        log.append("after")

    outer = asyncio.create_task(caller())
    await _settle()
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert log == ["absorbed"] and task.done() and not task.cancelled()
