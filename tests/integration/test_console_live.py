"""The console's live page in a real browser: headless Chromium over the DevTools Protocol
(tests/integration/cdp.py) against a real server started with a configuration FILE and one
native call worker.

SIPp registers a contact for agent alice (register.xml) and then holds a 10 s call to her
echo line through the edge (uac_edge_call_long.xml, RTP from a pcap). The admin's live page
shows the registration (AOR, contact, source, expiry counting down), the call under alice with
its Call-ID and the worker holding 1 call, and its status region announces the change (and
nothing while no count changes); once SIPp hangs up the counts are 0 again. A Twilio Media
Streams client (tests/integration/media_stream_client.py) then calls alice's websocket: the
call worker holds that call too, until it hangs up. A supervisor sees the same page.
Screenshots go to the test's temporary directory (printed at the end; docs/console.md lists
them). Skipped when chromium is not installed.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import (
    DEMO_PASSWORD,
    DEMO_USER,
    SCENARIOS,
    ServerProcess,
    free_port,
    run_sipp,
    sipp_path,
)
from tests.integration.media_stream_client import MediaStreamClient
from tests.integration.rtp_signals import tone, write_pcmu_pcap
from tests.integration.test_calls import NUMBER, wait_metric
from tests.integration.test_console_api import with_users
from tests.integration.test_console_pages_agents import log_in

pytestmark = pytest.mark.integration

WS_SECRET = "live-page-websocket-secret-0123456789"


@pytest.fixture
def server(server_factory: Any) -> ServerProcess:
    """The base config (agent alice: the echo line) with a user per role, one call worker."""

    def mutate(config: dict[str, Any]) -> None:
        with_users(config)
        config["server"]["workers"] = 1
        config["server"]["media"] = {"engine": "native", "calls_per_worker": 4}
        config["agents"][0]["websocket"] = {"enabled": True, "secret": WS_SECRET}

    s: ServerProcess = server_factory(mutate)
    return s


def cells(tbody: str, key: str, value: str) -> str:
    """A JS expression: the text of each cell of the row of ``tbody`` whose ``data-<key>`` is
    ``value`` (null while there is none)."""
    return (
        f"(r => r && [...r.children].map(c => c.textContent))"
        f"(document.querySelector('#{tbody} tr[data-{key}=\"' + {json.dumps(value)} + '\"]'))"
    )


async def row(page: Page, tbody: str, key: str, value: str, check: str) -> list[str]:
    """Wait until the row's cells ``c`` pass ``check`` (a JS expression on ``c``)."""
    cells_now: list[str] = await page.until(
        f"(c => c && ({check}) && c)({cells(tbody, key, value)})", timeout=20
    )
    return cells_now


async def test_live_page_shows_a_registration_a_held_call_and_the_worker_load(
    server: ServerProcess, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    wait_metric(server, "sipserver_media_workers_up", 1)
    base = server.http_url
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    async with open_page(
        "about:blank", tmp_path / "chromium-profile", ("--window-size=1280,1100",)
    ) as page:
        await log_in(page, base, "admin", "/dashboard/live")
        # Nothing yet: alice with 0 calls, no registration, the worker ready and idle.
        idle_agent = await row(page, "calls-rows", "agent", "alice", "c[1] === '0'")
        (worker_id,) = await page.until(
            "(ids => ids.length === 1 && ids)"
            "([...document.querySelectorAll('#workers-rows tr[data-worker]')]"
            ".map(r => r.dataset.worker))"
        )
        idle_worker = await row(page, "workers-rows", "worker", worker_id, "c[2] === 'ready'")
        assert await page.eval("document.querySelectorAll('#registrations-rows th').length") == 0
        assert idle_agent[2] == "no limit"
        assert idle_worker[1] == "native" and idle_worker[3] == "0 / 4", idle_worker
        assert int(idle_worker[4]) > 0  # the worker's pid
        await page.until("Number(document.body.dataset.refreshes) >= 3")
        quiet = await page.eval("document.getElementById('announce').textContent")
        assert quiet == ""  # refreshes that change no count are not announced

        # SIPp registers a contact for alice: the row counts its time down.
        result = run_sipp("register.xml", server.sip_port)
        assert result.returncode == 0, result.output
        (aor,) = await page.until(
            "(a => a.length === 1 && a)([...document.querySelectorAll("
            "'#registrations-rows tr[data-aor]')].map(r => r.dataset.aor))"
        )
        registration = await row(page, "registrations-rows", "aor", aor, "c[4] !== ''")
        first_left = int(registration[4].removesuffix(" s"))
        counted_down = await page.until(
            f"(c => parseInt(c[4]) < {first_left} && c[4])"
            f"({cells('registrations-rows', 'aor', aor)})",
            timeout=5,
        )
        assert DEMO_USER in aor and registration[3] == "alice", registration
        source_port = registration[2].removeprefix("udp:127.0.0.1:")  # SIPp's UDP socket
        assert source_port.isdigit() and f"@127.0.0.1:{source_port}" in registration[1]
        assert 3500 < first_left <= 3600 and counted_down.endswith(" s")

        # SIPp holds a 10 s call to alice's echo line: the call worker holds it.
        sipp = subprocess.Popen(
            [
                sipp_path(), f"127.0.0.1:{server.sip_port}",
                "-sf", str(SCENARIOS / "uac_edge_call_long.xml"), "-s", NUMBER,
                "-au", DEMO_USER, "-ap", DEMO_PASSWORD,
                "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)),
                "-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            busy_agent = await row(page, "calls-rows", "agent", "alice", "c[1] === '1'")
            call_id = await page.eval(
                "document.querySelector('#calls-rows tr[data-agent=alice] li').dataset.call"
            )
            busy_worker = await row(page, "workers-rows", "worker", worker_id, "c[3] === '1 / 4'")
            meter = await page.eval(
                "(m => [m.value, m.max, m.getAttribute('aria-label')])"
                "(document.querySelector('#workers-rows meter'))"
            )
            await page.until(
                "(t => t.includes('calls in progress: 1') && t)"
                "(document.getElementById('announce').textContent)"
            )
            summary = await page.eval("document.getElementById('calls-summary').textContent")
            await page.screenshot(tmp_path / "live-1-call-in-progress.png")
            assert sipp.wait(timeout=40) == 0
        finally:
            if sipp.poll() is None:
                sipp.kill()
        assert busy_agent[0] == "alice" and busy_worker[2] == "ready"
        # The call's id is SIPp's Call-ID (its default: "<n>-<pid>@<address>"), then the door.
        assert busy_agent[3].startswith(f"{call_id} · sip · since "), busy_agent
        assert call_id.endswith("@127.0.0.1"), call_id
        assert meter[:2] == [1, 4] and meter[2] == f"{worker_id}: 1 of 4 calls", meter
        assert summary.startswith("1 call in progress") and "sip 1" in summary, summary

        # The call ended: the counts go back to 0 and the change is announced.
        await row(page, "calls-rows", "agent", "alice", "c[1] === '0' && c[3] === ''")
        await row(page, "workers-rows", "worker", worker_id, "c[3] === '0 / 4'")
        await page.until(
            "document.getElementById('announce').textContent.includes('calls in progress: 0')"
        )
        await page.screenshot(tmp_path / "live-2-call-ended.png")

        # A Twilio Media Streams client calls alice's websocket: the call worker runs its
        # session (relayed), so the worker holds it too; then it hangs up.
        ws_url = f"{base.replace('http://', 'ws://')}/ws/alice/{WS_SECRET}"
        async with aiohttp.ClientSession() as http:
            client = MediaStreamClient(await http.ws_connect(ws_url))
            await client.start()
            try:
                ws_call = await row(page, "calls-rows", "agent", "alice", "c[1] === '1'")
                await row(page, "workers-rows", "worker", worker_id, "c[3] === '1 / 4'")
                await page.screenshot(tmp_path / "live-3-websocket-call.png")
            finally:
                await client.stop()
        assert " · websocket · since " in ws_call[3] and call_id not in ws_call[3], ws_call
        await row(page, "calls-rows", "agent", "alice", "c[1] === '0' && c[3] === ''")
        await row(page, "workers-rows", "worker", worker_id, "c[3] === '0 / 4'")
        refreshes = int(await page.eval("document.body.dataset.refreshes"))

        # A supervisor reads the same page (the registration is still there).
        await page.eval(
            "document.querySelector('form[action=\"/dashboard/logout\"] button').click()"
        )
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "supervisor", "/dashboard/live")
        supervisor_reg = await row(page, "registrations-rows", "aor", aor, "true")
        await row(page, "workers-rows", "worker", worker_id, "c[2] === 'ready'")
        error_shown = not await page.eval("document.getElementById('live-error').hidden")
        await page.screenshot(tmp_path / "live-4-supervisor.png")
        uncaught = [e for e in page.errors if e.startswith("uncaught")]
    print(f"screenshots {tmp_path}")
    assert refreshes > 3  # refreshed on its own, every few seconds
    assert supervisor_reg[2] == registration[2] and not error_shown
    assert uncaught == []
