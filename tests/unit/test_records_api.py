"""The calls API and retention against a real RecordStore in a temporary data directory, through
the real dashboard login (aiohttp's test server, a real HTTP client): listing, filters, search
and paging; role scope (404 for a hidden call, 403 for a non-admin delete); 400 on bad
parameters; HTTP ranges on a real WAV file; the JSON Lines export; deletes; and retention by
age and by size, oldest first, past a missing file."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from sipserver.config import Config, parse_config
from sipserver.listens.dashboard import COOKIE, Dashboard
from sipserver.listens.monitor import ListensHub
from sipserver.listens.passwords import hash_password
from sipserver.observability import Metrics
from sipserver.pipeline.call_record import CallRecord, RecordEvent, RecordingInfo, new_record_id
from sipserver.records.api import CallsApi, percentile
from sipserver.records.retention import RecordRetention, database_used_bytes
from sipserver.records.store import RecordStore

Client = TestClient[web.Request, web.Application]
NOW = 1_796_000_000.0  # 2026-11-30
DAY = 86_400.0
USERS = {
    "ann": "admin",
    "wes": "workspace_admin",
    "sue": "supervisor",
    "vic": "viewer",
}


def make_config(data_dir: Path, **records: Any) -> Config:
    """Agent ``alpha`` is seen by supervisors, ``beta`` only by the admins."""

    def agent(slug: str, number: str, roles: list[str]) -> dict[str, Any]:
        return {
            "slug": slug,
            "sip": {
                "enabled": True,
                "username": slug,
                "password": f"{slug}-password-123",
                "numbers": [number],
            },
            "listens": {"roles": roles},
        }

    raw = {
        "server": {"data_dir": str(data_dir), "records": records},
        "models": {"m": {"type": "custom"}},
        "agents": [
            agent("alpha", "100", ["admin", "supervisor"]),
            agent("beta", "200", ["admin"]),
        ],
        "users": [
            {"name": n, "role": r, "password_hash": hash_password(f"{n}-password-1", n=1024)}
            for n, r in USERS.items()
        ],
    }
    return parse_config(yaml.safe_dump(raw), env={})


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_recording(data_dir: Path, record_id: str, data: bytes) -> RecordingInfo:
    path = data_dir / "recordings" / "2026-11-30" / f"{record_id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return RecordingInfo(str(path), "wav", "mixed", 8000, 1.0, len(data))


def record(agent: str, started: float, **kw: Any) -> CallRecord:
    return CallRecord(
        id=new_record_id(started),
        agent=agent,
        ingress="sip",
        caller="+14155550123",
        called="100" if agent == "alpha" else "200",
        started_at=started,
        answered_at=started + 0.5,
        ended_at=started + 30.0,
        end_reason="caller_bye",
        ended_by="caller",
        **kw,
    )


def conversation(question: str, answer: str, v2v: float) -> list[RecordEvent]:
    stages = {"end_of_turn": 500.0, "stt": 300.0, "turn_model": 20.0}
    stages |= {"llm": 200.0, "tts": 100.0, "transport": v2v - 800.0}
    return [
        RecordEvent("transcript", 1.0, {"speaker": "caller", "text": question, "end": 2.0}),
        RecordEvent(
            "turn", 2.5, {"index": 0, "text": question, "stages": stages, "voice_to_voice": v2v}
        ),
        RecordEvent("transcript", 3.0, {"speaker": "agent", "text": answer}),
        RecordEvent("end", 29.5, {"reason": "caller_bye", "ended_by": "caller"}),
    ]


@dataclass
class Site:
    client: Client
    store: RecordStore
    data_dir: Path
    alpha: list[CallRecord]
    """Newest first."""
    beta: CallRecord
    recorded: CallRecord
    wav: bytes
    cookies: dict[str, str]
    live: set[str]
    """Ids of records whose call is in progress (the API's ``in_progress``)."""

    def as_(self, user: str) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.cookies[user]}"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    s = RecordStore(tmp_path / "data" / "records.db", flush_interval=0.02)
    s.open()
    yield s
    s.close()


@pytest.fixture
async def site(tmp_path: Path, store: RecordStore) -> AsyncIterator[Site]:
    data_dir = tmp_path / "data"
    config = make_config(data_dir)
    alpha = []
    for i in range(7):
        r = record("alpha", NOW - 3600 * (7 - i))
        store.save(r)
        question = "Do you deliver on Sundays?" if i % 3 == 0 else "What are your hours?"
        store.append(r.id, conversation(question, "We are open nine to five.", 800.0 + 100 * i))
        alpha.append(r)
    beta = record("beta", NOW - 1800)
    store.save(beta)
    store.append(beta.id, conversation("Secret beta question", "Beta answer", 900.0))
    wav = wav_bytes()
    recorded = alpha[-1]
    recorded.recording = write_recording(data_dir, recorded.id, wav)
    store.save(recorded)
    assert store.flush()
    board = Dashboard(lambda: config, ListensHub(), Metrics())
    live: set[str] = set()
    api = CallsApi(
        gate=board,
        config=lambda: config,
        store=lambda: store,
        wall_clock=lambda: NOW,
        in_progress=live.__contains__,
    )
    app = web.Application()
    board.add_routes(app)
    api.add_routes(app)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    cookies = {}
    for name in USERS:
        response = await client.post(
            "/dashboard/login",
            data={"name": name, "password": f"{name}-password-1"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        cookies[name] = response.cookies[COOKIE].value
        client.session.cookie_jar.clear()
    try:
        yield Site(client, store, data_dir, alpha[::-1], beta, recorded, wav, cookies, live)
    finally:
        await client.close()


async def get_json(site: Site, path: str, user: str = "ann", status: int = 200) -> Any:
    response = await site.client.get(path, headers=site.as_(user))
    body = await response.json()
    assert response.status == status, body
    return body


# ----------------------------------------------------------------------------- listing


async def test_the_list_is_newest_first_and_pages_with_a_cursor(site: Site) -> None:
    body = await get_json(site, "/api/calls?limit=3")
    ids = [c["id"] for c in body["calls"]]
    assert ids == [site.beta.id] + [r.id for r in site.alpha[:2]]
    assert "events" not in body["calls"][0]
    seen = list(ids)
    cursor = body["cursor"]
    while cursor:
        body = await get_json(site, f"/api/calls?limit=3&cursor={cursor}")
        seen += [c["id"] for c in body["calls"]]
        cursor = body["cursor"]
    assert seen == [site.beta.id] + [r.id for r in site.alpha]
    # The recording is a URL of the API, never the server's path of the file.
    row = next(c for c in (await get_json(site, "/api/calls"))["calls"] if c["recording"])
    assert row["recording"]["url"] == f"/api/calls/{site.recorded.id}/recording"
    assert "path" not in row["recording"]


async def test_filters_by_agent_time_and_transcript_text(site: Site) -> None:
    body = await get_json(site, "/api/calls?agent=beta")
    assert [c["id"] for c in body["calls"]] == [site.beta.id]
    # Oldest alpha calls are 7, 6, 5 h old; from/to in ISO-8601 (UTC) and epoch seconds.
    start = NOW - 6.5 * 3600
    when = datetime.datetime.fromtimestamp(start, datetime.UTC)
    by_epoch = await get_json(site, f"/api/calls?agent=alpha&from={start}")
    assert len(by_epoch["calls"]) == 6
    # ISO-8601 with Z, with an offset, and without a zone (UTC): the same instant.
    shifted = when.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    for iso in (
        when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        shifted.isoformat().replace("+", "%2B"),
        when.replace(tzinfo=None).isoformat(),
    ):
        by_iso = await get_json(site, f"/api/calls?agent=alpha&from={iso}")
        assert by_iso == by_epoch, iso
    body = await get_json(site, f"/api/calls?agent=alpha&to={int(NOW - 5.5 * 3600)}")
    assert [c["id"] for c in body["calls"]] == [r.id for r in site.alpha[-2:]]
    body = await get_json(site, "/api/calls?q=sundays")  # case-insensitive
    assert [c["id"] for c in body["calls"]] == [site.alpha[i].id for i in (0, 3, 6)]
    body = await get_json(site, "/api/calls?q=" + "%25")  # a literal %, no wildcard
    assert body == {"calls": [], "cursor": None}


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("from=1796000000&to=1795000000", "from"),
        ("q=" + "x" * 201, "q"),
        ("cursor=notanumber:abc", "cursor"),
        ("agent=" + "a" * 201, "agent"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    site: Site, query: str, parameter: str
) -> None:
    body = await get_json(site, f"/api/calls?{query}", status=400)
    assert body["parameter"] == parameter
    assert body["error"].startswith(f"{parameter}: ")


async def test_the_limits_themselves_are_fine(site: Site) -> None:
    body = await get_json(site, "/api/calls?limit=200&q=" + "x" * 200)
    assert body == {"calls": [], "cursor": None}


# ------------------------------------------------------------------------------- scope


async def test_no_session_is_401(site: Site) -> None:
    for path in ("/api/calls", f"/api/calls/{site.beta.id}"):
        response = await site.client.get(path)
        assert response.status == 401


async def test_a_supervisor_sees_only_the_agents_of_its_role(site: Site) -> None:
    body = await get_json(site, "/api/calls?limit=200", user="sue")
    assert {c["agent"] for c in body["calls"]} == {"alpha"}
    assert len(body["calls"]) == 7
    # Asking for the hidden agent shows nothing, like an agent that does not exist.
    assert (await get_json(site, "/api/calls?agent=beta", user="sue"))["calls"] == []
    # A hidden call is 404, the same answer as a call that does not exist.
    for suffix in ("", "/recording", "/export.jsonl"):
        hidden = await get_json(site, f"/api/calls/{site.beta.id}{suffix}", user="sue", status=404)
        missing = await get_json(site, f"/api/calls/{'0' * 26}{suffix}", user="sue", status=404)
        assert hidden == missing == {"error": "no such call"}
    await get_json(site, f"/api/calls/{site.alpha[0].id}", user="sue")
    # The viewer is in no agent's listens.roles; the workspace admin sees every agent.
    assert (await get_json(site, "/api/calls", user="vic"))["calls"] == []
    await get_json(site, f"/api/calls/{site.alpha[0].id}", user="vic", status=404)
    body = await get_json(site, "/api/calls?limit=200", user="wes")
    assert {c["agent"] for c in body["calls"]} == {"alpha", "beta"}


async def test_only_an_admin_deletes(site: Site) -> None:
    for user in ("sue", "wes"):
        response = await site.client.delete(
            f"/api/calls/{site.alpha[0].id}", headers=site.as_(user)
        )
        assert response.status == 403
        assert f"the role {USERS[user]} may not" in (await response.json())["error"]
    response = await site.client.delete(
        f"/api/calls/{site.alpha[0].id}",
        headers={**site.as_("ann"), "Origin": "http://evil.example"},
    )
    assert response.status == 403
    assert await asyncio.to_thread(site.store.get, site.alpha[0].id) is not None


# ---------------------------------------------------------------------------- one call


async def test_a_call_has_its_events_and_latency_percentiles(site: Site) -> None:
    newest = site.alpha[0]
    body = await get_json(site, f"/api/calls/{newest.id}", user="sue")
    assert body["id"] == newest.id and body["duration"] == 29.5
    assert [e["type"] for e in body["events"]] == ["transcript", "turn", "transcript", "end"]
    assert body["events"][0]["text"] == "Do you deliver on Sundays?"
    assert body["latency"]["call"] == {"p50": 1400.0, "p95": 1400.0, "turns": 1}
    # Alpha's turns in the last 24 h: 800, 900, ..., 1400 ms.
    turns = [800.0 + 100 * i for i in range(7)]
    assert body["latency"]["agent_24h"] == {
        "p50": 1100.0,
        "p95": round(percentile(turns, 0.95) or 0, 1),
        "turns": 7,
    }
    assert percentile(turns, 0.95) == pytest.approx(1370.0)
    assert percentile([], 0.5) is None


async def test_export_is_the_record_then_one_line_per_event(site: Site) -> None:
    response = await site.client.get(
        f"/api/calls/{site.recorded.id}/export.jsonl", headers=site.as_("ann")
    )
    assert response.status == 200
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert f"call-{site.recorded.id}.jsonl" in response.headers["Content-Disposition"]
    lines = (await response.text()).splitlines()
    parsed = [json.loads(line) for line in lines]
    assert len(parsed) == 1 + 4
    assert parsed[0]["id"] == site.recorded.id and "events" not in parsed[0]
    assert "path" not in parsed[0]["recording"]
    assert [p["type"] for p in parsed[1:]] == ["transcript", "turn", "transcript", "end"]


# ---------------------------------------------------------------------------- recording


async def test_the_recording_is_served_with_ranges(site: Site) -> None:
    url = f"/api/calls/{site.recorded.id}/recording"
    whole = await site.client.get(url, headers=site.as_("sue"))
    assert whole.status == 200
    assert whole.headers["Content-Type"] == "audio/wav"
    assert whole.headers["Accept-Ranges"] == "bytes"
    data = await whole.read()
    assert data == site.wav
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() == 8000
    part = await site.client.get(url, headers={**site.as_("sue"), "Range": "bytes=0-99"})
    assert part.status == 206
    assert await part.read() == site.wav[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(site.wav)}"
    tail = await site.client.get(url, headers={**site.as_("sue"), "Range": "bytes=-10"})
    assert tail.status == 206 and await tail.read() == site.wav[-10:]
    beyond = f"bytes={len(site.wav) + 10}-{len(site.wav) + 20}"
    bad = await site.client.get(url, headers={**site.as_("sue"), "Range": beyond})
    assert bad.status == 416
    assert bad.headers["Content-Range"] == f"bytes */{len(site.wav)}"


async def test_a_call_without_a_recording_or_its_file_is_404(site: Site) -> None:
    body = await get_json(site, f"/api/calls/{site.alpha[1].id}/recording", status=404)
    assert body["error"] == "this call has no recording"
    Path(site.recorded.recording.path).unlink()  # type: ignore[union-attr]
    body = await get_json(site, f"/api/calls/{site.recorded.id}/recording", status=404)
    assert body["error"] == "the recording file is missing"


async def test_only_files_under_the_recordings_directory_are_served(site: Site) -> None:
    secret = site.data_dir / "records.db"
    outside = site.data_dir.parent / "outside.wav"
    outside.write_bytes(site.wav)
    link = site.data_dir / "recordings" / "link.wav"
    link.symlink_to(outside)
    tricks = [
        str(secret),
        str(outside),
        str(site.data_dir / "recordings" / ".." / "records.db"),
        str(link),
        str(site.data_dir / "recordings"),
    ]
    for path in tricks:
        r = site.alpha[2]
        r.recording = RecordingInfo(path, "wav", "mixed", 8000, 1.0, 10)
        site.store.save(r)
        assert await asyncio.to_thread(site.store.flush)
        response = await site.client.get(f"/api/calls/{r.id}/recording", headers=site.as_("ann"))
        assert response.status == 404, path
    # Nor does a delete remove a file outside.
    for path in (str(link), str(outside)):
        r = site.alpha[2] if path == str(link) else site.alpha[3]
        r.recording = RecordingInfo(path, "wav", "mixed", 8000, 1.0, 10)
        site.store.save(r)
        assert await asyncio.to_thread(site.store.flush)
        response = await site.client.delete(f"/api/calls/{r.id}", headers=site.as_("ann"))
        assert await response.json() == {"deleted": r.id, "recording_deleted": False}
    assert outside.exists() and secret.exists() and link.is_symlink()


# ------------------------------------------------------------------------------- delete


async def test_an_admin_deletes_the_record_and_its_file(site: Site) -> None:
    path = Path(site.recorded.recording.path)  # type: ignore[union-attr]
    assert path.exists()
    response = await site.client.delete(f"/api/calls/{site.recorded.id}", headers=site.as_("ann"))
    assert response.status == 200
    assert await response.json() == {"deleted": site.recorded.id, "recording_deleted": True}
    assert not path.exists()
    assert await asyncio.to_thread(site.store.get, site.recorded.id) is None
    await get_json(site, f"/api/calls/{site.recorded.id}", status=404)
    response = await site.client.delete(f"/api/calls/{site.recorded.id}", headers=site.as_("ann"))
    assert response.status == 404
    # No events left behind: the agent's latencies lost that call's turn.
    turns = await asyncio.to_thread(site.store.turn_latencies, "alpha", 0)
    assert sorted(turns) == [800.0 + 100 * i for i in range(6)]


async def test_a_call_in_progress_is_not_deleted(site: Site) -> None:
    site.live.add(site.recorded.id)
    path = Path(site.recorded.recording.path)  # type: ignore[union-attr]
    response = await site.client.delete(f"/api/calls/{site.recorded.id}", headers=site.as_("ann"))
    assert response.status == 409
    assert "in progress" in (await response.json())["error"]
    assert path.exists()
    assert await asyncio.to_thread(site.store.get, site.recorded.id) is not None
    site.live.clear()  # the call ended: now it goes
    response = await site.client.delete(f"/api/calls/{site.recorded.id}", headers=site.as_("ann"))
    assert response.status == 200
    assert not path.exists()


async def test_without_a_store_the_api_is_503(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    board = Dashboard(lambda: config, ListensHub(), Metrics())
    api = CallsApi(gate=board, config=lambda: config, store=lambda: None, wall_clock=lambda: NOW)
    app = web.Application()
    board.add_routes(app)
    api.add_routes(app)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        await client.post("/dashboard/login", data={"name": "ann", "password": "ann-password-1"})
        response = await client.get("/api/calls")
        assert response.status == 503
        assert "server.records.store" in (await response.json())["error"]
    finally:
        await client.close()


# ---------------------------------------------------------------------------- retention


def retention_for(
    store: RecordStore, config: Config, **kw: Any
) -> tuple[RecordRetention, CollectorRegistry]:
    registry = CollectorRegistry()
    retention = RecordRetention(
        store=lambda: store, config=lambda: config, registry=registry, wall_clock=lambda: NOW, **kw
    )
    return retention, registry


def deleted(registry: CollectorRegistry, reason: str) -> float:
    name = "sipserver_records_retention_deleted_total"
    return registry.get_sample_value(name, {"reason": reason}) or 0.0


async def test_a_pass_the_machine_fails_is_one_line_and_the_next_pass_runs(
    tmp_path: Path, store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (a connection flood) or a failing disk: a warning naming the
    error, no stack trace in the log, and the task goes on."""
    import errno

    from sipserver.records import retention as retention_module

    lines: list[tuple[str, str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **kw: Any) -> None:
            lines.append(("warning", event, kw))

        def exception(self, event: str, **kw: Any) -> None:
            lines.append(("exception", event, kw))

    monkeypatch.setattr(retention_module, "log", Log())
    retention, _ = retention_for(store, make_config(tmp_path / "data"), interval=0.01)
    passes = 0

    def failing() -> Any:
        nonlocal passes
        passes += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(retention, "run_once", failing)
    retention.start()
    try:
        for _ in range(200):
            if passes >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await retention.stop()
    assert passes >= 2
    assert lines[0] == (
        "warning",
        "records_retention_failed",
        {"error": "OSError: [Errno 24] Too many open files"},
    )
    assert all(level == "warning" for level, _, _ in lines)


def test_retention_deletes_old_records_and_their_files(tmp_path: Path, store: RecordStore) -> None:
    data_dir = tmp_path / "data"
    config = make_config(data_dir, retention_days=30)
    old = [record("alpha", NOW - (31 + i) * DAY) for i in range(3)]
    new = [record("alpha", NOW - 29 * DAY), record("beta", NOW - 60)]
    for r in old + new:
        r.recording = write_recording(data_dir, r.id, b"RIFF" + os.urandom(1000))
        store.save(r)
        store.append(r.id, conversation("hello", "hi", 900.0))
    # The file of one old record is already gone: the others still go.
    Path(old[1].recording.path).unlink()  # type: ignore[union-attr]
    assert store.flush()
    retention, registry = retention_for(store, config)
    result = retention.run_once()
    assert (result.expired, result.oversize) == (3, 0)
    assert (result.files_deleted, result.files_missing) == (2, 1)
    assert not result.more
    for r in old:
        assert store.get(r.id) is None
        assert not Path(r.recording.path).exists()  # type: ignore[union-attr]
    for r in new:
        assert store.get(r.id) is not None
        assert Path(r.recording.path).exists()  # type: ignore[union-attr]
    assert deleted(registry, "age") == 3 and deleted(registry, "size") == 0
    assert retention.run_once().expired == 0


def test_the_size_cap_deletes_the_oldest_first(tmp_path: Path, store: RecordStore) -> None:
    data_dir = tmp_path / "data"
    size = 100_000
    records = [record("alpha", NOW - (10 - i) * 3600) for i in range(5)]  # oldest first
    for r in records:
        r.recording = write_recording(data_dir, r.id, os.urandom(size))
        store.save(r)
        store.append(r.id, conversation("hello", "hi", 900.0))
    assert store.flush()
    used = database_used_bytes(store.path)
    assert used > 0
    # Room for the database and two and a half recordings: the three oldest go.
    config = make_config(data_dir, max_size_mb=(used + 2.5 * size) / (1024 * 1024))
    retention, registry = retention_for(store, config)
    result = retention.run_once()
    assert (result.expired, result.oversize, result.files_deleted) == (0, 3, 3)
    assert result.bytes_before > result.bytes_after
    assert result.bytes_after <= config.server.records.max_size_mb * 1024 * 1024
    kept = [r.id for r in store.search(limit=10).records]
    assert kept == [records[4].id, records[3].id]
    for r in records:
        assert Path(r.recording.path).exists() == (r.id in kept)  # type: ignore[union-attr]
    assert deleted(registry, "size") == 3
    assert retention.run_once().oversize == 0


def test_a_pass_stops_at_its_batch_limit(tmp_path: Path, store: RecordStore) -> None:
    data_dir = tmp_path / "data"
    config = make_config(data_dir, retention_days=1)
    for i in range(5):
        store.save(record("alpha", NOW - (2 + i) * DAY))
    assert store.flush()
    retention, _ = retention_for(store, config, batch=2)
    first = retention.run_once()
    assert (first.expired, first.more) == (2, True)
    assert len(store.search(limit=10).records) == 3
    retention.run_once()
    last = retention.run_once()
    assert (last.expired, last.more) == (1, False)
    assert store.search(limit=10).records == []


async def test_the_task_runs_a_pass_at_start(tmp_path: Path, store: RecordStore) -> None:
    data_dir = tmp_path / "data"
    config = make_config(data_dir, retention_days=1)
    old = record("alpha", NOW - 3 * DAY)
    store.save(old)
    assert await asyncio.to_thread(store.flush)
    retention, registry = retention_for(store, config, interval=3600.0)
    retention.start()
    try:
        for _ in range(200):
            if retention.last is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await retention.stop()
    assert retention.last is not None and retention.last.expired == 1
    assert await asyncio.to_thread(store.get, old.id) is None
    assert deleted(registry, "age") == 1


def test_the_database_counts_its_used_pages_not_its_file(
    tmp_path: Path, store: RecordStore
) -> None:
    """SQLite keeps a deleted row's pages in the file: counting the file would delete every
    record once the file reached the cap. Half the cap keeps about half the records."""
    data_dir = tmp_path / "data"
    records = [record("alpha", NOW - (100 - i) * 60) for i in range(100)]  # oldest first
    for r in records:
        store.save(r)
        store.append(
            r.id, [RecordEvent("transcript", 1.0, {"speaker": "caller", "text": "x" * 8000})]
        )
    assert store.flush()
    used = database_used_bytes(store.path)
    assert used > 100 * 8000
    config = make_config(data_dir, max_size_mb=used / 2 / (1024 * 1024))
    retention, _ = retention_for(store, config)
    result = retention.run_once()
    assert 40 <= result.oversize <= 60, result
    assert store.path.stat().st_size >= used  # the file did not shrink
    kept = [r.id for r in store.search(limit=200).records]
    assert kept == [r.id for r in records[result.oversize :]][::-1]  # the newest stayed
