"""AI Listens end to end: a Twilio fork of a two-track call, transcripts per speaker and a
knowledge-base suggestion on the dashboard's SSE stream; logins and roles; the webhook.

The server runs the offline stack (Silero VAD and Whisper tiny.en shared with the voice agents,
BM25 over config/kb/demo). Caller and human agent speech come from espeak-ng.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sipserver.listens.passwords import hash_password
from tests.integration.conftest import ServerProcess, base_config, caller_args, free_port
from tests.integration.listens_client import ForkClient, SseReader, login
from tests.integration.test_voice_calls import KB
from tests.speech import HEARD_COST, espeak, read_wav, write_wav

pytestmark = pytest.mark.integration

SECRET = "listens-secret-0123456789"
NUMBER = "+15005550199"
ROLES = ("admin", "workspace_admin", "supervisor", "agent", "viewer")


def password_of(role: str) -> str:
    return f"{role}-password-1"


def listens_config(sip_port: int, http_port: int, data_dir: Path) -> dict[str, Any]:
    config = base_config(sip_port, http_port, data_dir)
    config["agents"].append(
        {
            "slug": "copilot",
            "name": "Support co-pilot",
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": False, "model": "m"},
            "websocket": {"enabled": False, "secret": SECRET},
            "listens": {
                "enabled": True,
                "numbers": [NUMBER],
                "channel": "both_tracks",
                "forward_to": "+15005550123",
            },
        }
    )
    # A small scrypt cost keeps the test quick; the format and the check are the real ones.
    config["users"] = [
        {"name": role, "role": role, "password_hash": hash_password(password_of(role), n=1024)}
        for role in ROLES
    ]
    return config


ENGINES = ("pjsua2", "native")
"""``server.media.engine``: with native, every fork is transcribed in a call worker and main
only relays the tracks' frames (docs/listens.md "Where it runs")."""


def on_engine(config: dict[str, Any], engine: str) -> dict[str, Any]:
    """``config`` with ``server.media.engine`` set (native: one call worker)."""
    config["server"]["media"] = {"engine": engine}
    if engine == "native":
        config["server"]["workers"] = 1
    return config


def start_on(server: ServerProcess, engine: str) -> None:
    """Start ``server``; on native wait for its call worker's models to be warm."""
    server.start()
    if engine == "native":
        from tests.integration.test_calls import wait_metric

        wait_metric(server, "sipserver_media_workers_up", 1)


@pytest.fixture(scope="module", params=ENGINES)
def listens_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    engine: str = request.param
    workdir = tmp_path_factory.mktemp(f"listens-{engine}")
    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), workdir / "data")
    server = ServerProcess(on_engine(config, engine), workdir)
    server.engine = engine  # type: ignore[attr-defined]
    start_on(server, engine)
    yield server
    server.stop()


async def test_forked_call_streams_transcripts_and_a_suggestion(
    listens_server: ServerProcess, tmp_path: Path
) -> None:
    server = listens_server
    question = espeak("How much does it cost?", tmp_path, rate=8000)
    reply = espeak("Our plans start at nineteen dollars a month.", tmp_path, rate=8000)
    http, resp = await login(server.http_url, "supervisor", password_of("supervisor"))
    started = time.monotonic()
    try:
        assert resp.status == 303, resp.status
        calls = SseReader(await http.get(f"{server.http_url}/api/listens/copilot/events"))
        assert await calls.wait_for(lambda r: r.of("calls") == [[]], 5)
        ws = await http.ws_connect(f"{server.http_url}/listens/copilot/{SECRET}/stream")
        fork = ForkClient(ws)
        await fork.start({"caller": "+14155550123", "called": NUMBER, "callSid": "CA777"})
        assert await calls.wait_for(lambda r: len(r.of("calls")) == 2 and r.of("calls")[1], 5)
        listed = calls.of("calls")[1][0]
        assert listed["number"] == NUMBER and listed["channel"] == "both_tracks"
        stream = await http.get(
            f"{server.http_url}/api/listens/copilot/calls/{listed['call_id']}/events"
        )
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = SseReader(stream)
        await asyncio.sleep(0.5)
        fork.say("inbound", question)
        await fork.idle()
        spoken = time.monotonic()
        assert await events.wait_for(lambda r: bool(r.of("suggestion")), 30), events.events
        suggestion_delay = time.monotonic() - spoken
        fork.say("outbound", reply)
        await fork.idle()

        def done(r: SseReader) -> bool:
            speakers = {t["speaker"] for t in r.of("transcript")}
            return speakers == {"caller", "agent"} and bool(r.of("suggestion"))

        assert await events.wait_for(done, 30), events.events
        elapsed = time.monotonic() - started
        # A viewer that (re)connects now gets the history first.
        late = SseReader(
            await http.get(
                f"{server.http_url}/api/listens/copilot/calls/{listed['call_id']}/events"
            )
        )
        assert await late.wait_for(lambda r: len(r.of("transcript")) >= 2, 5), late.events
        await fork.stop()
        assert await events.wait_for(lambda r: bool(r.of("ended")), 10)
        assert await calls.wait_for(lambda r: r.of("calls")[-1] == [], 10)
        for reader in (calls, events, late):
            await reader.close()
    finally:
        await http.close()
    lines = {t["speaker"]: t["text"].lower() for t in events.of("transcript")}
    suggestion = events.of("suggestion")[0]
    print(f"transcripts {lines}\nsuggestion {suggestion['text']!r} from {suggestion['sources']}")
    print(f"caller's last audio sent -> suggestion on the SSE stream: {suggestion_delay:.2f} s")
    print(f"call to suggestion and both transcripts: {elapsed:.1f} s")
    assert HEARD_COST.search(lines["caller"]), lines
    assert re.search(r"plans?|dollars|month", lines["agent"]), lines
    assert suggestion["mode"] == "passage"
    assert suggestion["sources"][0]["source"] == "pricing.md"
    assert suggestion["sources"][0]["title"] == "Pricing"
    assert "19 dollars" in suggestion["text"]
    assert fork.received == [], "a fork must never be sent anything"
    assert server.metric("sipserver_listens_suggestions_total", mode="passage") >= 1
    assert server.metric("sipserver_listens_calls_active") == 0
    status = server.get("/status")[1]
    if server.engine == "native":  # type: ignore[attr-defined]
        # The fork was transcribed in the call worker: main never loaded a model.
        assert status["models_loaded"] == 0, status["models_loaded"]
    else:
        assert status["models_loaded"] > 0


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_is_allowed_or_refused(listens_server: ServerProcess, role: str) -> None:
    http, resp = await login(listens_server.http_url, role, password_of(role))
    try:
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
        cookie = resp.cookies["sipserver_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        base = listens_server.http_url
        allowed = role in ("admin", "workspace_admin", "supervisor")
        api = await http.get(f"{base}/api/listens/copilot/calls")
        page = await http.get(f"{base}/dashboard/agents/copilot/listens", allow_redirects=False)
        assert api.status == (200 if allowed else 403)
        assert page.status == (200 if allowed else 403)
        agents = await (await http.get(f"{base}/dashboard")).text()
        assert ("/dashboard/agents/copilot/listens" in agents) is allowed
        me = await (await http.get(f"{base}/api/me")).json()
        assert me == {"name": role, "role": role}
    finally:
        await http.close()


async def test_no_session_wrong_password_and_logout(listens_server: ServerProcess) -> None:
    base = listens_server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for path in ("/api/listens/copilot/calls", "/api/listens/copilot/events", "/api/me"):
            assert (await http.get(base + path)).status == 401
        page = await http.get(f"{base}/dashboard/agents/copilot/listens", allow_redirects=False)
        assert page.status == 303 and page.headers["Location"].startswith("/dashboard/login")
        bad = await http.post(
            f"{base}/dashboard/login", data={"name": "supervisor", "password": "nope"}
        )
        assert bad.status == 401 and "Wrong name or password" in await bad.text()
        ghost = await http.post(f"{base}/dashboard/login", data={"name": "ghost", "password": "x"})
        assert ghost.status == 401
        cross = await http.post(
            f"{base}/dashboard/login",
            data={"name": "admin", "password": password_of("admin")},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        )
        assert cross.status == 403
        assert (await http.get(f"{base}/dashboard/login")).status == 200
    http, _ = await login(base, "admin", password_of("admin"))
    try:
        assert (await http.get(f"{base}/api/me")).status == 200
        assert (await http.get(f"{base}/dashboard/logout")).status == 405  # POST only
        out = await http.post(f"{base}/dashboard/logout", allow_redirects=False)
        assert out.status == 303
        assert (await http.get(f"{base}/api/me")).status == 401
    finally:
        await http.close()
    assert listens_server.metric("sipserver_dashboard_logins_total", result="bad_credentials") >= 2


async def test_webhook_forks_monitored_numbers_and_rejects_others(
    listens_server: ServerProcess,
) -> None:
    base = listens_server.http_url
    form = {"CallSid": "CA1", "From": "+14155550123", "To": NUMBER}
    async with aiohttp.ClientSession() as http:
        ok = await http.post(f"{base}/listens/copilot/{SECRET}", data=form)
        assert ok.status == 200 and ok.content_type == "application/xml"
        root = ET.fromstring(await ok.text())
        stream = root.find("Start/Stream")
        assert stream is not None and stream.get("track") == "both_tracks"
        assert stream.get("url") == f"ws://{base[7:]}/listens/copilot/{SECRET}/stream"
        dial = root.find("Dial/Number")
        assert dial is not None and dial.text == "+15005550123"
        other = await http.post(f"{base}/listens/copilot/{SECRET}", data={**form, "To": "+1999"})
        assert (await other.text()).count("<Reject") == 1
        for path in (f"/listens/copilot/{'x' * 25}", f"/listens/nobody/{SECRET}"):
            wrong = await http.post(base + path, data=form)
            assert wrong.status == 403 and await wrong.text() == "forbidden"
        ws_wrong = await http.get(f"{base}/listens/copilot/{'x' * 25}/stream")
        assert ws_wrong.status == 403


@pytest.mark.parametrize("engine", ENGINES)
async def test_shutdown_ends_forks_and_dashboard_streams_promptly(
    tmp_path: Path, engine: str
) -> None:
    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), tmp_path / "data")
    server = ServerProcess(on_engine(config, engine), tmp_path)
    start_on(server, engine)
    base = server.http_url
    http, _ = await login(base, "admin", password_of("admin"))
    try:
        calls = SseReader(await http.get(f"{base}/api/listens/copilot/events"))
        fork = ForkClient(await http.ws_connect(f"{base}/listens/copilot/{SECRET}/stream"))
        await fork.start({"caller": "+14155550123", "called": NUMBER})
        assert await calls.wait_for(lambda r: r.of("calls")[-1:] != [[]], 5)
        call_id = calls.of("calls")[-1][0]["call_id"]
        events = SseReader(await http.get(f"{base}/api/listens/copilot/calls/{call_id}/events"))
        assert await events.wait_for(lambda r: bool(r.of("call")), 5)
        started = time.monotonic()
        code = await asyncio.to_thread(server.stop)
        took = time.monotonic() - started
        assert await events.wait_for(lambda r: bool(r.of("ended")), 2)
        await fork.stop()
        for reader in (calls, events):
            await reader.close()
    finally:
        await http.close()
    print(f"stopped in {took:.2f} s with a fork and two SSE streams open")
    assert code == 0 and took < 5.0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["pjsua2", "native"])
async def test_sip_call_to_a_listens_number_is_answered_silently_and_transcribed(
    tmp_path: Path, engine: str
) -> None:
    """A PBX (a pjsua2 UA) calls the listens number over SIP with the agent's credentials: the
    call is answered, nothing but silence comes back, and the caller's speech shows up on the
    dashboard stream as caller lines with a suggestion. On the native engine the call worker
    transcribes the call and sends its lines and suggestions to main's hub in EVENT records:
    main loads no model."""
    import json as _json

    import numpy as np

    from tests.integration.test_calls import wait_metric

    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), tmp_path / "data")
    copilot = config["agents"][-1]
    copilot["listens"]["channel"] = "inbound"  # the PBX sends the caller's side
    config["server"]["media"] = {"engine": engine}
    config["server"]["workers"] = 1
    copilot["sip"] = {
        "enabled": True,
        "numbers": ["+15005550198"],
        "username": "copilot",
        "password": "copilot-password-1",
    }
    server = ServerProcess(config, tmp_path)
    server.start()
    try:
        wait_metric(server, "sipserver_media_workers_up", 1)
        question = espeak("How much does it cost?", tmp_path, rate=8000)
        play, record = tmp_path / "play.wav", tmp_path / "rec.wav"
        rate = 8000
        silence = np.zeros(rate, dtype=np.int16)
        write_wav(play, np.concatenate((silence, question, silence, silence)), rate)
        http, resp = await login(server.http_url, "supervisor", password_of("supervisor"))
        try:
            assert resp.status == 303
            calls = SseReader(await http.get(f"{server.http_url}/api/listens/copilot/events"))
            proc = await asyncio.create_subprocess_exec(
                *caller_args(
                    server.sip_port, NUMBER, user="copilot", password="copilot-password-1",
                    play=play, record=record, seconds=9, wait_bye=1,
                ),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert await calls.wait_for(lambda r: any(r.of("calls")), 15), calls.events
            listed = next(c for c in calls.of("calls") if c)[0]
            assert listed["number"] == NUMBER
            events = SseReader(
                await http.get(
                    f"{server.http_url}/api/listens/copilot/calls/{listed['call_id']}/events"
                )
            )
            assert await events.wait_for(lambda r: bool(r.of("suggestion")), 30), events.events
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            result = _json.loads(out.decode().strip().splitlines()[-1])
            assert result["ended_by"] != "never-connected", result
            for reader in (calls, events):
                await reader.close()
        finally:
            await http.close()
        lines = list(events.of("transcript"))
        assert lines and {t["speaker"] for t in lines} == {"caller"}, lines
        assert HEARD_COST.search(" ".join(t["text"].lower() for t in lines)), lines
        assert events.of("suggestion")[0]["sources"][0]["source"] == "pricing.md"
        _, heard = read_wav(record)
        assert heard.size > rate * 5, heard.size  # the call was up for the whole clip
        assert int(np.abs(heard).max()) < 200, "a listens call must send nothing but silence"
        if engine == "native":
            assert server.get("/status")[1]["models_loaded"] == 0
    finally:
        server.stop()


@pytest.mark.slow
async def test_a_call_worker_killed_during_forks_ends_only_its_fork(tmp_path: Path) -> None:
    """Native engine, two call workers, one fork on each (least loaded first). SIGKILL one
    worker: its fork's monitored call ends (``call worker lost``) and its websocket is closed
    1011; the other fork goes on being transcribed."""
    import os
    import signal

    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), tmp_path / "data")
    config["agents"][-1]["listens"]["channel"] = "inbound"
    on_engine(config, "native")["server"]["workers"] = 2
    server = ServerProcess(config, tmp_path)
    server.start()
    base = server.http_url
    question = espeak("How much does it cost?", tmp_path, rate=8000)

    def workers() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = server.get("/status")[1]["media_workers"]
        return listed

    http, _ = await login(base, "admin", password_of("admin"))
    forks: list[ForkClient] = []
    try:
        from tests.integration.test_calls import wait_metric

        wait_metric(server, "sipserver_media_workers_up", 2)
        calls = SseReader(await http.get(f"{base}/api/listens/copilot/events"))
        for i in range(2):
            ws = await http.ws_connect(f"{base}/listens/copilot/{SECRET}/stream")
            fork = ForkClient(ws, sid=f"MZkill{i}", tracks=("inbound",))
            await fork.start({"caller": f"+1415555012{i}", "called": NUMBER})
            forks.append(fork)
            assert await calls.wait_for(lambda r, n=i + 1: len(r.of("calls")[-1]) == n, 10)
        assert sorted(w["calls"] for w in workers()) == [1, 1]  # one fork on each
        streams = {
            fork.sid: SseReader(
                await http.get(f"{base}/api/listens/copilot/calls/{fork.sid}/events")
            )
            for fork in forks
        }
        victim = workers()[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def ended(r: SseReader) -> bool:
            return bool(r.of("ended"))

        assert await calls.wait_for(lambda r: len(r.of("calls")[-1]) == 1, 10), calls.events
        gone = [sid for sid, r in streams.items() if ended(r)]
        assert len(gone) == 1, {sid: r.events for sid, r in streams.items()}
        assert streams[gone[0]].of("ended")[0]["reason"] == "call worker lost"
        lost = next(f for f in forks if f.sid == gone[0])
        survivor = next(f for f in forks if f.sid != gone[0])
        for _ in range(100):  # the lost fork's next media message gets its socket closed
            if lost.ws.closed:
                break
            await asyncio.sleep(0.05)
        assert lost.ws.close_code == 1011, lost.ws.close_code
        assert calls.of("calls")[-1][0]["call_id"] == survivor.sid
        survivor.say("inbound", question)
        events = streams[survivor.sid]
        assert await events.wait_for(lambda r: bool(r.of("transcript")), 30), events.events
        assert HEARD_COST.search(events.of("transcript")[0]["text"].lower())
        assert not ended(events)
        for reader in (calls, *streams.values()):
            await reader.close()
    finally:
        for fork in forks:
            await fork.stop()
        await http.close()
        server.stop()
