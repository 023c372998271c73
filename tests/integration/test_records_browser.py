"""A browser seeks in a call's recording: headless Chromium, logged in through the dashboard's
form, opens ``GET /api/calls/{id}/recording`` (a 120 s WAV, 3.8 MB) and jumps to 100 s. Chromium
asks with a Range header and marks the media seekable only when the server answers 206 (the
calls API over a real RecordStore, in process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sipserver.listens.dashboard import Dashboard
from sipserver.listens.monitor import ListensHub
from sipserver.observability import Metrics
from sipserver.records.api import CallsApi
from sipserver.records.store import RecordStore
from tests.integration.cdp import chromium_path, open_page
from tests.integration.console_ui import log_in_as
from tests.unit.test_records_api import NOW, make_config, record, wav_bytes, write_recording


async def test_chromium_seeks_in_a_recording(tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    data_dir = tmp_path / "data"
    store = RecordStore(data_dir / "records.db", flush_interval=0.02)
    store.open()
    config = make_config(data_dir)
    call = record("alpha", NOW)
    call.recording = write_recording(data_dir, call.id, wav_bytes(seconds=120.0, rate=16000))
    store.save(call)
    assert store.flush()
    statuses: list[tuple[str | None, int]] = []

    async def note(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.endswith("/recording"):
            statuses.append((request.headers.get("Range"), response.status))

    board = Dashboard(lambda: config, ListensHub(), Metrics())
    app = web.Application()
    app.on_response_prepare.append(note)
    board.add_routes(app)
    CallsApi(
        gate=board, config=lambda: config, store=lambda: store, wall_clock=lambda: NOW
    ).add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with open_page("about:blank", tmp_path / "chromium-profile") as page:
            await log_in_as(page, base, "sue", "sue-password-1", "/dashboard")
            await page.goto(f"{base}/api/calls/{call.id}/recording")
            media = "document.querySelector('video, audio')"
            await page.until(f"{media} && {media}.readyState >= 1")
            assert await page.eval(f"{media}.duration") == pytest.approx(120.0, abs=0.05)
            seeked = await page.eval(
                f"new Promise(ok => {{ const m = {media}; m.pause();"
                " m.addEventListener('seeked', () => ok(m.currentTime), {once: true});"
                " m.currentTime = 100.0; })"
            )
            assert seeked == pytest.approx(100.0, abs=0.05)
            assert await page.eval(f"{media}.seekable.end(0)") == pytest.approx(120.0, abs=0.05)
            # (the dashboard page itself misses the console's scripts in this cut-down app)
            assert [e for e in page.errors if "/api/calls" in e] == []
    finally:
        await server.close()
        store.close()
    # The browser asked for a range and got 206 partial content.
    assert any(rng is not None and status == 206 for rng, status in statuses), statuses
