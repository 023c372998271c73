"""The call worker's own logic (sipserver/rtp/call_worker.py), the CONFIG record and the
session factory shared with the main process (sipserver/rtp/sessions.py).

The engine and the media clock are hand-written fakes here (the SIP UA and RTP are tested with
real peers in tests/integration/test_call_worker.py); the sessions are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import yaml

from sipserver.admission import default_max_calls
from sipserver.config import Config, ConfigError, load_config, parse_config
from sipserver.edge.dispatcher import MediaWorker, WorkerPool, WorkerPoolSettings
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.rtp.call_worker import (
    RELAYED_CALLS_BASE,
    CallWorker,
    CallWorkerOptions,
    parse_args,
)
from sipserver.rtp.framelink import (
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Configuration,
    Dtmf,
    FrameLink,
    FrameLinkError,
    Hello,
    LinkRecord,
    RecordDecoder,
    RecordType,
    Stats,
    encode,
)
from sipserver.rtp.sessions import (
    CallSessions,
    config_from_record,
    configuration_record,
)
from sipserver.server import Server, calls_per_worker
from tests.unit.test_config import FULL_EXAMPLE, FULL_EXAMPLE_ENV

FRAME = 320  # 20 ms at 8 kHz, s16le


def echo_config(**server: Any) -> Config:
    """One agent without a realtime model: an echo test line."""
    raw: dict[str, Any] = {
        "server": {"store": "memory", **server},
        "agents": [
            {
                "slug": "echo",
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550101"],
                    "username": "echo",
                    "password": "echo-password-1",
                },
            }
        ],
    }
    return parse_config(yaml.safe_dump(raw), env={})


# ------------------------------------------------------------------------------ CONFIG record


@pytest.mark.parametrize("path", [FULL_EXAMPLE, None], ids=["full.yaml", "embedded"])
def test_config_round_trips_through_the_config_record(path: Path | None) -> None:
    config = load_config(path, env=FULL_EXAMPLE_ENV)
    record = configuration_record(config, path, 7)
    (decoded,) = RecordDecoder().feed(encode(record))
    assert isinstance(decoded, Configuration) and decoded.sequence == 7
    again = config_from_record(decoded)
    assert again == config
    assert again.model_dump(mode="json") == config.model_dump(mode="json")
    # Secrets travel intact (the link is a private socket): the worker's sessions need them.
    assert again.credentials == config.credentials
    assert [a.sip.password for a in again.agents] == [a.sip.password for a in config.agents]
    assert decoded.config_path == (None if path is None else str(path.resolve()))


def test_full_example_secrets_reach_the_worker() -> None:
    config = load_config(FULL_EXAMPLE, env=FULL_EXAMPLE_ENV)
    again = config_from_record(configuration_record(config, FULL_EXAMPLE, 1))
    assert again.credentials["openai"]["api_key"] == "sk-test"
    assert again.agents[0].sip.password == "support-password"


def test_a_config_record_that_does_not_validate_names_the_key() -> None:
    record = Configuration(1, {"server": {"workers": 0}}, None)
    with pytest.raises(ConfigError) as info:
        config_from_record(record)
    assert any(e.startswith("server.workers:") for e in info.value.errors)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[]", "not an object"),
        (b'{"sequence": 1, "config": []}', "'config' must be an object"),
        (b'{"sequence": 1, "config": {}, "config_path": 3}', "'config_path'"),
        (b'{"config": {}}', "'sequence' must be an integer"),
    ],
)
def test_bad_config_records_are_protocol_errors(payload: bytes, message: str) -> None:
    data = (len(payload) + 1).to_bytes(4, "little") + bytes([RecordType.CONFIG]) + payload
    with pytest.raises(FrameLinkError, match=message):
        RecordDecoder().feed(data)


def test_call_started_says_hosted_and_defaults_to_not_hosted() -> None:
    record = CallStarted(3, "cid", "<sip:a@x>", "<sip:b@y>", "sip:b@y", "PCMU/8000", "h:1")
    (decoded,) = RecordDecoder().feed(encode(record))
    assert isinstance(decoded, CallStarted) and not decoded.hosted
    hosted = CallStarted(3, "cid", "a", "b", "sip:b@y", "PCMU/8000", "h:1", hosted=True)
    (decoded,) = RecordDecoder().feed(encode(hosted))
    assert isinstance(decoded, CallStarted) and decoded.hosted
    # A record without the key (an older worker) is not hosted; a non-boolean is an error.
    payload = (
        b'{"sip_call_id":"c","from":"a","to":"b","request_uri":"r",'
        b'"codec":"PCMU","remote_rtp":"h:1"'
    )
    head = bytes([RecordType.CALL_STARTED]) + (3).to_bytes(4, "little")
    for tail, hosted_flag in ((b"}", False), (b',"hosted":true}', True)):
        body = head + payload + tail
        (decoded,) = RecordDecoder().feed(len(body).to_bytes(4, "little") + body)
        assert isinstance(decoded, CallStarted) and decoded.hosted is hosted_flag
    body = head + payload + b',"hosted":1}'
    with pytest.raises(FrameLinkError, match="'hosted' must be true or false"):
        RecordDecoder().feed(len(body).to_bytes(4, "little") + body)


# ------------------------------------------------------------------------------ capacity


def test_calls_per_worker_auto_divides_max_calls_rounding_up() -> None:
    config = echo_config(max_calls=301, workers=2)
    assert calls_per_worker(config, 2, 1000) == 151
    # Never more than the RTP slice holds (2 ports per call).
    assert calls_per_worker(config, 2, 100) == 50


def test_calls_per_worker_explicit_and_auto_max_calls() -> None:
    config = echo_config(media={"calls_per_worker": 40})
    assert calls_per_worker(config, 4, 1000) == 40
    # max_calls auto: what the cores serve for this kind of agent (admission.py).
    auto = echo_config()
    total = default_max_calls(auto)
    assert calls_per_worker(auto, 3, 100_000) == -(-total // 3)


# ------------------------------------------------------------------------------ fakes


@dataclass(eq=False)
class FakeStream:
    sample_rate: int = 8000
    incoming: list[bytes] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)

    def read_frame(self) -> bytes:
        return self.incoming.pop(0) if self.incoming else bytes(FRAME)

    def write_frame(self, pcm: bytes) -> None:
        assert len(pcm) == FRAME
        self.written.append(pcm)

    def stats(self) -> dict[str, int]:
        return {"received": 5, "lost": 1, "concealed_frames": 1, "jitter_ms": 3, "latched": 1}


@dataclass(eq=False)
class FakeCall:
    number: int
    sip_call_id: str = "call-1"
    from_uri: str = "<sip:alice@127.0.0.1>;tag=a"
    to_uri: str = "<sip:+15005550101@127.0.0.1>"
    request_uri: str = "sip:+15005550101@127.0.0.1"
    headers: dict[str, str] = field(default_factory=lambda: {"x-sipserver-agent": "echo"})
    codec: str = "PCMU/8000"
    remote_rtp: str = "127.0.0.1:4000"
    stream: FakeStream = field(default_factory=FakeStream)


class FakeEngine:
    """Records hang-ups and reports the end at once, as the UA does after its BYE."""

    def __init__(self, options: CallWorkerOptions, worker: CallWorker) -> None:
        self.worker = worker
        self.calls: dict[int, FakeCall] = {}
        self.hangups: list[tuple[int, str]] = []

    @property
    def sip_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 5999)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for number in list(self.calls):
            self.hangup(number, "worker stopping")

    def hangup(self, number: int, reason: str) -> None:
        self.hangups.append((number, reason))
        call = self.calls.pop(number, None)
        if call is not None:
            self.worker.on_call_ended(call, reason, 0)

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "received": 5, "lost": 1}

    def answer(self, call: FakeCall) -> FakeCall:
        self.calls[call.number] = call
        self.worker.on_call_started(call)
        return call


class FakeClock:
    def __init__(self, on_tick: Callable[[], None]) -> None:
        self.on_tick = on_tick
        self.ticks = 0
        self.late_ticks = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, n: int) -> None:
        for _ in range(n):
            self.ticks += 1
            self.on_tick()


class RecordingWorker(CallWorker):
    """A worker whose records to main are kept in a list instead of a link."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            CallWorkerOptions(link="unused", worker_id="w1", capacity=10),
            engine_factory=FakeEngine,
            clock_factory=FakeClock,
            **kwargs,
        )
        self.sent: list[LinkRecord] = []

    def _send(self, record: LinkRecord) -> None:
        self.sent.append(record)

    @property
    def fake_engine(self) -> FakeEngine:
        assert isinstance(self.engine, FakeEngine)
        return self.engine

    @property
    def fake_clock(self) -> FakeClock:
        assert isinstance(self.clock, FakeClock)
        return self.clock

    def sent_of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.sent if isinstance(r, kind)]


async def configured(worker: RecordingWorker, config: Config, sequence: int = 1) -> None:
    worker.on_record(configuration_record(config, None, sequence))
    for _ in range(200):
        if worker.config_sequence == sequence:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the CONFIG record was not applied")


def loud(n: int = FRAME // 2) -> bytes:
    return (np.full(n, 8000, dtype=np.int16)).tobytes()


# ------------------------------------------------------------------------------ the worker


async def test_a_call_before_the_configuration_is_hung_up_and_not_reported() -> None:
    worker = RecordingWorker()
    assert not worker.ready and worker.stats()["ready"] == 0
    worker.fake_engine.answer(FakeCall(1))
    assert worker.fake_engine.hangups == [(1, "not configured yet")]
    assert worker.sent == []  # main never heard of it
    assert worker.stats()["calls_without_session"] == 1


async def test_configuration_makes_the_worker_ready_and_says_so_at_once() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    (stats,) = worker.sent_of(Stats)
    assert stats.counters["ready"] == 1 and stats.counters["config"] == 1
    assert stats.counters["capacity"] == 10
    assert stats.counters["received"] == 5  # the engine's counters are included


async def test_an_echo_call_is_hosted_fed_by_the_clock_and_hung_up_by_its_session() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    call = worker.fake_engine.answer(FakeCall(1))
    (started,) = worker.sent_of(CallStarted)
    assert started.hosted and started.call == 1 and started.sip_call_id == "call-1"
    call.stream.incoming = [loud() for _ in range(100)]
    worker.fake_clock.run(100)
    # One frame out per tick; the chime plays first (not silence), then the echo.
    assert len(call.stream.written) == 100
    assert any(any(f) for f in call.stream.written[:30])
    assert worker.stats()["hosted"] == 1 and worker.stats()["ticks"] == 100
    # '#' hangs the echo line up: the engine is asked, main hears DTMF then CALL_ENDED.
    worker.on_dtmf(call, "#", 160, "rfc4733")
    worker.fake_clock.run(1)
    assert worker.fake_engine.hangups and worker.fake_engine.hangups[0][0] == 1
    assert worker.sent_of(Dtmf) == [Dtmf(1, "#", 160, "rfc4733")]
    (ended,) = worker.sent_of(CallEnded)
    assert ended.call == 1
    assert worker.stats()["calls"] == 0


async def test_a_tick_plays_its_calls_in_slices_with_other_work_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tick runs TICK_SLICE calls per pass of the event loop: what is scheduled meanwhile (a
    SIP message, a call set-up step) runs before the rest of the tick, and a call that ends
    between two slices is not fed."""
    from sipserver.rtp import call_worker

    monkeypatch.setattr(call_worker, "TICK_SLICE", 2)
    worker = RecordingWorker()
    await configured(worker, echo_config())
    calls = [worker.fake_engine.answer(FakeCall(n, sip_call_id=f"c{n}")) for n in range(1, 8)]
    worker.fake_clock.run(1)
    assert [len(c.stream.written) for c in calls] == [1, 1, 0, 0, 0, 0, 0]  # first slice at once
    seen: list[list[int]] = []
    asyncio.get_running_loop().call_soon(
        lambda: seen.append([len(c.stream.written) for c in calls])
    )
    worker.fake_engine.hangup(7, "caller hung up")  # ends before its slice
    for _ in range(6):
        await asyncio.sleep(0)
    assert seen == [[1, 1, 1, 1, 0, 0, 0]]  # ran between the second slice and the third
    assert [len(c.stream.written) for c in calls] == [1, 1, 1, 1, 1, 1, 0]  # call 7 never fed
    assert worker.stats()["frames"] == 6


async def test_stats_are_running_totals_ended_calls_included() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    call = worker.fake_engine.answer(FakeCall(1))
    worker.fake_clock.run(10)
    worker.fake_clock.late_ticks += 1  # the clock counts the next tick late
    worker.fake_clock.run(1)
    stats = worker.stats()
    assert stats["frames"] == 11 and stats["late_frames"] == 1
    assert stats["jitter_ms_max"] == 3  # the live stream's
    # Live: the engine's sum (received 5, lost 1) is all there is.
    assert stats["rtp_received"] == 5 and stats["rtp_lost"] == 1
    worker.fake_engine.hangup(call.number, "bye")
    stats = worker.stats()
    # The ended stream's counters are kept (the fake engine still reports 5/1 of its own).
    assert stats["rtp_received"] == 10 and stats["received"] == 10
    assert stats["rtp_lost"] == 2 and stats["concealed_frames"] == 1
    assert "latched" not in stats and stats["jitter_ms_max"] == 0  # states, not added up
    assert stats["frames"] == 11  # no call, no frames
    worker.fake_clock.run(5)
    assert worker.stats()["frames"] == 11


async def test_the_pipeline_metrics_go_out_in_stats() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    worker.metrics.voice_turn_latency.labels("first_frame").observe(0.42)
    worker.metrics.voice_interruptions.labels("paused").inc()
    stats = worker.stats()
    assert stats["pipeline/voice_turn_latency/first_frame/le=0.5"] == 1
    assert stats["pipeline/voice_turn_latency/first_frame/sum_us"] == 420_000
    assert stats["pipeline/voice_interruptions/paused"] == 1


async def test_call_ended_from_main_hangs_the_call_up() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    worker.fake_engine.answer(FakeCall(4))
    worker.on_record(CallEnded(4, "admin", 0))
    assert worker.fake_engine.hangups == [(4, "admin")]
    assert [r.call for r in worker.sent_of(CallEnded)] == [4]


async def test_a_call_for_no_agent_is_hung_up() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    worker.fake_engine.answer(FakeCall(2, headers={"X-Sipserver-Agent": "nobody"}))
    assert worker.fake_engine.hangups == [(2, "no agent for this call")]
    assert worker.sent_of(CallStarted) == []


class Exploding:
    """A session whose next_frame raises after a few frames (a bug in one call)."""

    hangup_requested: str | None = None

    def __init__(self) -> None:
        self.frames = 0
        self.ended: str | None = None

    def on_start(self, info: CallInfo) -> None:
        pass

    def on_audio(self, pcm: bytes) -> None:
        pass

    def next_frame(self) -> bytes:
        self.frames += 1
        if self.frames > 3:
            raise RuntimeError("bug")
        return bytes(FRAME)

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_hangup(self, reason: str) -> None:
        self.ended = reason


async def test_a_failing_session_ends_only_its_own_call() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    bad = Exploding()
    assert worker.sessions is not None
    real = worker.sessions.new_session

    def factory(info: CallInfo, on_event: Any = None) -> CallSession | None:
        return bad if info.call_id == "bad" else real(info)

    worker.sessions.new_session = factory  # type: ignore[method-assign]
    good = worker.fake_engine.answer(FakeCall(1, sip_call_id="good"))
    worker.fake_engine.answer(FakeCall(2, sip_call_id="bad"))
    worker.fake_clock.run(10)
    assert bad.ended == "session error"
    assert worker.stats()["session_errors"] == 1
    assert [r.call for r in worker.sent_of(CallEnded)] == [2]
    assert len(good.stream.written) == 10  # the other call never missed a tick


async def test_listens_calls_are_hosted_and_their_items_go_to_main_as_events() -> None:
    from sipserver.rtp.framelink import Event
    from sipserver.rtp.listens_host import ListensHost
    from tests.unit.test_listens_events import _parts

    worker = RecordingWorker()
    await configured(worker, echo_config())
    assert worker.sessions is not None
    worker.sessions.is_listens = lambda info: True  # type: ignore[method-assign]
    worker.listens = ListensHost(lambda agent: _parts())
    call = worker.fake_engine.answer(FakeCall(3))
    (started,) = worker.sent_of(CallStarted)
    assert started.hosted  # no audio goes to main: the worker transcribes
    events = worker.sent_of(Event)
    assert [(e.call, e.event["type"]) for e in events] == [(3, "listens_started")]
    call.stream.incoming = [loud(), loud()]
    worker.fake_clock.run(2)
    assert call.stream.written == [bytes(FRAME), bytes(FRAME)]  # silence back
    assert worker.sent_of(Audio) == []
    worker.on_record(CallEnded(3, "too many monitored calls", 503))
    assert worker.fake_engine.hangups == [(3, "too many monitored calls")]
    await worker.listens.wait_closed()
    assert worker.sent_of(Event)[-1].event["type"] == "listens_ended"


async def test_records_that_are_not_the_workers_go_to_the_relay_hook() -> None:
    seen: list[LinkRecord] = []

    def relay(worker: CallWorker) -> Callable[[LinkRecord], Iterable[LinkRecord]]:
        def handle(record: LinkRecord) -> Iterable[LinkRecord]:
            seen.append(record)
            if isinstance(record, Audio):
                return [Audio(tuple(AudioFrame(f.call, 0, 0, f.pcm) for f in record.frames))]
            return []

        return handle

    worker = RecordingWorker(relay_factory=relay)
    relayed = RELAYED_CALLS_BASE + 1
    started = CallStarted(relayed, "ws-1", "a", "b", "", "L16/8000", "")
    worker.on_record(started)
    worker.on_record(Audio((AudioFrame(relayed, 0, 0, loud()),)))
    worker.on_record(CallEnded(relayed, "closed", 0))
    assert seen[0] == started
    assert isinstance(seen[1], Audio) and seen[1].frames[0].call == relayed
    assert seen[2] == CallEnded(relayed, "closed", 0)
    assert worker.sent_of(Audio)[0].frames[0].call == relayed  # the hook's answer went out
    # Without a hook they are counted, never an error.
    plain = RecordingWorker()
    plain.on_record(started)
    assert plain.stats()["records_unhandled"] == 1


async def test_a_reload_swaps_the_configuration_for_new_calls_with_the_same_runtime() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    runtime = worker.voice
    first = worker.fake_engine.answer(FakeCall(1))
    renamed = echo_config()
    raw = renamed.model_dump(mode="json")
    raw["agents"][0]["slug"] = "echo2"
    await configured(worker, Config.model_validate(raw), sequence=2)
    assert worker.voice is runtime  # one runtime, so one VAD batcher per rate, per process
    assert worker.stats()["config"] == 2
    worker.fake_engine.answer(FakeCall(2))  # its header names the old slug: no agent now
    assert (2, "no agent for this call") in worker.fake_engine.hangups
    worker.fake_clock.run(3)
    assert len(first.stream.written) == 3  # the call in progress keeps its session


async def test_an_invalid_configuration_keeps_the_running_one() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    worker.on_record(Configuration(2, {"server": {"workers": 0}}, None))
    await asyncio.sleep(0.05)
    assert worker.config_sequence == 1 and worker.stats()["config_errors"] == 1
    worker.fake_engine.answer(FakeCall(1))
    assert worker.sent_of(CallStarted)[0].hosted


COMMON = ["--link", "/x", "--worker-id", "w1"]


def test_command_line_needs_a_positive_capacity() -> None:
    options = parse_args(
        [*COMMON, "--rtp-port", "20000", "--rtp-port-count", "100", "--capacity", "50"]
    )
    assert (options.capacity, options.sample_rate, options.rtp_host) == (50, 8000, "127.0.0.1")
    with pytest.raises(SystemExit):
        parse_args([*COMMON, "--rtp-port", "1", "--rtp-port-count", "2", "--capacity", "0"])


# ------------------------------------------------------------------------------ sessions


def test_call_sessions_choose_echo_listens_or_nothing() -> None:
    config = echo_config()

    class NoVoice:
        def serves(self, agent: Any) -> bool:
            return False

    listened: list[str] = []

    def listens(agent: Any) -> CallSession | None:
        listened.append(agent.slug)
        return None

    sessions = CallSessions(lambda: config, NoVoice(), listens=listens)  # type: ignore[arg-type]
    info = CallInfo("c", "echo", "a", "<sip:+15005550101@x>", 8000, "sip")
    assert type(sessions.new_session(info)).__name__ == "EchoSession"
    assert sessions.new_session(CallInfo("c", "ghost", "a", "b", 8000, "sip")) is None
    assert not sessions.is_listens(info)
    assert listened == []


# ------------------------------------------------------------------------------ main's side


class OpenLink:
    """Stands in for a worker's frame link: open, records kept."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[LinkRecord] = []

    def send(self, record: LinkRecord) -> None:
        self.sent.append(record)


def worker_of(kind: str, *, ready: bool = False) -> MediaWorker:
    hello = Hello("w1", 1, kind, "127.0.0.1", 5080, 10, 8000)
    worker = MediaWorker("w1", 0, link=cast(FrameLink, OpenLink()), hello=hello)
    worker.models_ready = ready
    return worker


def test_a_call_worker_takes_calls_only_once_its_models_are_warm() -> None:
    pool = WorkerPool(
        WorkerPoolSettings(link_path="/unused", engine="native", capacity=10),
        on_record=lambda w, r: None,
        on_worker_lost=lambda w, c: None,
    )
    worker = worker_of("native")
    pool._workers["w1"] = worker
    assert worker.up and not worker.ready and pool.pick() is None
    worker.models_ready = True
    assert pool.pick() is worker
    assert pool._command[-1] == "sipserver.rtp.call_worker"


def test_main_counts_a_hosted_call_and_builds_no_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = Server(echo_config(media={"engine": "native"}))
    assert server.sessions is not None and server.pool is not None
    worker = worker_of("native", ready=True)
    hosted = CallStarted(1, "c1", "a", "<sip:+15005550101@x>", "r", "PCMU/8000", "h:1",
                         {"X-Sipserver-Agent": "echo"}, hosted=True)  # fmt: skip
    server.media_workers._worker_record(worker, hosted)
    assert worker.calls == {1} and len(server.sessions) == 0
    server.media_workers._worker_record(worker, CallEnded(1, "bye", 200))
    assert worker.calls == set()
    # A relayed call (AI Listens, or a pjsua2 worker's) gets its session in main as before.
    server.media_workers._worker_record(worker, replace(hosted, call=2, hosted=False))
    assert worker.calls == {2} and len(server.sessions) == 1


def test_a_call_worker_gets_the_configuration_when_it_says_hello(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = echo_config(media={"engine": "native"})
    server = Server(config)
    worker = worker_of("native")
    server.media_workers._worker_up(worker)
    link = cast(OpenLink, worker.link)
    (record,) = link.sent
    assert isinstance(record, Configuration) and record.sequence == 1
    assert config_from_record(record) == config
    pjsua2 = worker_of("pjsua2")
    server.media_workers._worker_up(pjsua2)
    assert cast(OpenLink, pjsua2.link).sent == []  # its sessions run in main


class CountingClock(FakeClock):
    """A FakeClock that knows whether it runs, as MediaClock does."""

    def __init__(self, on_tick: Callable[[], None]) -> None:
        super().__init__(on_tick)
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


async def test_the_clock_stops_without_a_hosted_call_and_restarts_with_the_next() -> None:
    worker = RecordingWorker()
    worker.clock = clock = CountingClock(worker.tick)
    worker._clock_wanted = True  # as run() does once the link is up
    clock.start()
    clock.run(1)  # a tick with no call hosted: an idle worker stops its 50 Hz wake-ups
    assert not clock.running
    await configured(worker, echo_config())
    call = worker.fake_engine.answer(FakeCall(1))
    assert clock.running  # the hosted call started it again
    call.stream.incoming = [loud() for _ in range(3)]
    clock.run(3)
    assert clock.running and len(call.stream.written) == 3
    worker.on_call_ended(call, "bye", 200)
    clock.run(1)
    assert not clock.running
