"""Relayed websocket calls: RemoteSession (main) <-> RelayedCalls (worker), sans-I/O and over a
real unix socket pair with FrameLink."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import numpy as np
import pytest

from sipserver.config import parse_config
from sipserver.pipeline.echo import EchoSession
from sipserver.pipeline.events import (
    AgentState,
    AgentText,
    Interruption,
    SessionEvent,
    StateChanged,
)
from sipserver.pipeline.session import CallInfo, CallSession, frame_bytes
from sipserver.rtp.call_worker import relayed_calls
from sipserver.rtp.framelink import (
    RELAY_CALL_BASE,
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    FrameLink,
    LinkRecord,
    RecordDecoder,
    RelayedCallStarted,
    encode,
)
from sipserver.rtp.relay import RelayedCalls, RemoteSession, RemoteSessions, is_relayed
from sipserver.server import needs_call_workers
from tests.unit.test_call_worker import RecordingWorker, configured, echo_config

RATE = 8000
FB = frame_bytes(RATE)
INFO = CallInfo("MZ1", "support", "+1415", "+1800", RATE, "twilio")


def frame(value: int) -> bytes:
    return np.full(FB // 2, value, dtype="<i2").tobytes()


class ScriptedSession:
    """Records what the relay does to it; emits events and hangs up on demand."""

    def __init__(self, on_event: Callable[[SessionEvent], None]) -> None:
        self.on_event = on_event
        self.hangup_requested: str | None = None
        self.log: list[tuple[str, object]] = []
        self.ticks = 0
        self.rewound: list[int] = []
        self.fail_on_audio = False

    def on_start(self, info: CallInfo) -> None:
        self.log.append(("start", info))

    def on_audio(self, frame: bytes) -> None:
        if self.fail_on_audio:
            raise RuntimeError("boom")
        self.log.append(("audio", frame))

    def on_dtmf(self, digit: str) -> None:
        self.log.append(("dtmf", digit))
        if digit == "#":
            self.hangup_requested = "caller pressed #"

    def on_hangup(self, reason: str) -> None:
        self.log.append(("hangup", reason))

    def next_frame(self) -> bytes:
        self.log.append(("next", self.ticks))
        self.ticks += 1
        return frame(self.ticks)

    def rewind(self, ms: int) -> int:
        self.rewound.append(ms)
        return ms


class Pair:
    """Main's RemoteSessions and a worker's RelayedCalls, records passed through the codec."""

    def __init__(self, factory: Callable[..., CallSession | None] | None = None) -> None:
        self.sessions: list[ScriptedSession] = []
        self.closed: list[tuple[str, int]] = []
        self.worker = RelayedCalls(factory or self._factory)
        self.main = RemoteSessions(on_closed=lambda w, c: self.closed.append((w, c)))
        self.to_worker: list[LinkRecord] = []
        self.events: list[SessionEvent] = []

    def _factory(self, info: CallInfo, on_event: Callable[[SessionEvent], None]) -> ScriptedSession:
        session = ScriptedSession(on_event)
        self.sessions.append(session)
        return session

    def open(self) -> RemoteSession:
        return self.main.open("w1", self.to_worker.append, on_event=self.events.append)

    def pump(self) -> list[LinkRecord]:
        """Deliver main's records to the worker and its replies back; return the replies."""
        replies: list[LinkRecord] = []
        decoder = RecordDecoder()
        while self.to_worker:
            record = self.to_worker.pop(0)
            (wired,) = decoder.feed(encode(record))
            assert wired == record and is_relayed(wired)
            for reply in self.worker.handle(wired):
                (back,) = decoder.feed(encode(reply))
                replies.append(back)
                self.main.handle("w1", back)
        return replies


def test_remote_session_is_a_call_session() -> None:
    session: CallSession = RemoteSession(RELAY_CALL_BASE, lambda r: None)
    assert session.hangup_requested is None


def test_start_sends_call_info_and_the_worker_builds_the_session() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    assert pair.to_worker == [
        RelayedCallStarted(RELAY_CALL_BASE, "MZ1", "support", "+1415", "+1800", "twilio", RATE)
    ]
    assert pair.pump() == []
    assert pair.sessions[0].log == [("start", INFO)]
    assert pair.worker.calls == [RELAY_CALL_BASE]


def test_each_tick_is_answered_with_one_frame_played_one_tick_later() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    played = []
    for tick in range(5):
        remote.on_audio(frame(100 + tick))
        played.append(remote.next_frame())
        replies = pair.pump()
        assert [type(r) for r in replies] == [Audio]
    session = pair.sessions[0]
    # The worker's session saw the gateway's order: the tick's audio, then next_frame.
    assert session.log[1:5] == [
        ("audio", frame(100)),
        ("next", 0),
        ("audio", frame(101)),
        ("next", 1),
    ]
    # Tick 0 had nothing back yet (silence, one underflow); tick n plays reply n-1.
    assert played == [bytes(FB), frame(1), frame(2), frame(3), frame(4)]
    assert remote.underflows == 1
    assert remote.received_frames == 5


def test_tick_without_caller_audio_still_ticks_the_session_once() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    remote.next_frame()  # the jitter buffer gave nothing this tick
    (sent,) = pair.to_worker
    assert isinstance(sent, Audio) and [f.pcm for f in sent.frames] == [b""]
    pair.pump()
    remote.on_audio(frame(7))
    remote.on_audio(frame(8))  # two in one tick (the jitter buffer catching up)
    remote.next_frame()
    pair.pump()
    assert pair.sessions[0].log[1:] == [
        ("next", 0),
        ("audio", frame(7)),
        ("audio", frame(8)),
        ("next", 1),
    ]


def test_seq_and_timestamp_advance_per_frame_each_way() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    sent: list[AudioFrame] = []
    back: list[AudioFrame] = []
    for tick in range(3):
        if tick != 1:
            remote.on_audio(frame(1))
        remote.next_frame()
        sent += [f for r in pair.to_worker if isinstance(r, Audio) for f in r.frames]
        back += [f for r in pair.pump() if isinstance(r, Audio) for f in r.frames]
    assert [(f.seq, f.timestamp) for f in sent] == [(0, 0), (1, 160), (2, 160)]
    assert [(f.seq, f.timestamp) for f in back] == [(0, 0), (1, 160), (2, 320)]


def test_events_come_back_before_the_tick_reply_and_reach_on_event() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    session = pair.sessions[0]
    session.on_event(StateChanged(1.0, AgentState.LISTENING, AgentState.SPEAKING))
    session.on_event(Interruption(2.0, "paused"))
    remote.next_frame()
    replies = pair.pump()
    assert [type(r) for r in replies] == [Event, Event, Audio]
    assert pair.events == [
        StateChanged(1.0, AgentState.LISTENING, AgentState.SPEAKING),
        Interruption(2.0, "paused"),
    ]


def test_waiting_events_are_bounded_per_call() -> None:
    pair = Pair(None)
    pair.worker = RelayedCalls(pair._factory, max_events=3)
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    for i in range(5):
        pair.sessions[0].on_event(AgentText(float(i), f"t{i}"))
    assert [r.event["text"] for r in pair.worker.take_events() if isinstance(r, Event)] == [
        "t2",
        "t3",
        "t4",
    ]
    assert pair.worker.counters.events_dropped == 2
    assert pair.worker.take_events() == []


def test_rewind_and_dtmf_reach_the_worker_session() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    assert remote.rewind(200) == 0
    remote.on_dtmf("5")
    pair.pump()
    session = pair.sessions[0]
    assert session.rewound == [200]
    assert session.log[-1] == ("dtmf", "5")


def test_session_hangup_ends_the_call_after_its_last_frame_played() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    remote.next_frame()
    pair.pump()
    remote.on_dtmf("#")  # the worker's session asks to hang up
    replies = pair.pump()
    assert replies == [CallEnded(RELAY_CALL_BASE, "caller pressed #", 0)]
    assert pair.sessions[0].log[-1] == ("hangup", "caller pressed #")
    assert pair.worker.calls == []
    # The reply of the previous tick is still waiting: played before the hangup shows.
    assert remote.hangup_requested is None
    assert remote.next_frame() == frame(1)
    assert remote.hangup_requested == "caller pressed #"
    assert pair.to_worker == []  # no tick is sent for an ended call
    remote.on_hangup("hangup")  # the gateway's finish(): nothing more to tell the worker
    assert pair.to_worker == []
    assert pair.closed == [("w1", RELAY_CALL_BASE)]
    assert len(pair.main) == 0


def test_gateway_hangup_tells_the_worker() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    remote.on_hangup("client_closed")
    remote.on_hangup("client_closed")  # once only
    assert pair.to_worker == [CallEnded(RELAY_CALL_BASE, "client_closed", 0)]
    pair.pump()
    assert pair.sessions[0].log[-1] == ("hangup", "client_closed")
    assert len(pair.worker) == 0 and len(pair.main) == 0


def test_no_agent_ends_the_call_with_404() -> None:
    pair = Pair(lambda info, on_event: None)
    remote = pair.open()
    remote.on_start(INFO)
    assert pair.pump() == [CallEnded(RELAY_CALL_BASE, "no agent for this call", 404)]
    assert remote.hangup_requested == "no agent for this call"
    assert pair.worker.counters.refused == 1


def test_a_failing_session_ends_only_its_call() -> None:
    pair = Pair()
    a, b = pair.open(), pair.open()
    assert b.call == a.call + 1
    a.on_start(INFO)
    b.on_start(INFO)
    pair.pump()
    pair.sessions[0].fail_on_audio = True
    for remote in (a, b):
        remote.on_audio(frame(1))
        remote.next_frame()
    replies = pair.pump()
    assert CallEnded(a.call, "session error", 500) in replies
    assert a.hangup_requested == "session error"
    assert b.hangup_requested is None and b.received_frames == 1
    assert pair.worker.calls == [b.call]
    assert pair.worker.counters.session_errors == 1


def test_wrong_sized_caller_frames_are_counted_not_given() -> None:
    pair = Pair()
    remote = pair.open()
    remote.on_start(INFO)
    pair.pump()
    remote.on_audio(b"\x00\x00" * 7)
    remote.next_frame()
    pair.pump()
    assert pair.sessions[0].log[1:] == [("next", 0)]
    assert pair.worker.counters.bad_frames == 1


def test_records_for_unknown_calls_are_ignored_and_counted() -> None:
    worker = RelayedCalls(lambda info, on_event: None)
    assert worker.handle(Audio((AudioFrame(RELAY_CALL_BASE + 9, 0, 0, frame(1)),))) == []
    assert worker.handle(Dtmf(RELAY_CALL_BASE + 9, "1", 0, "stream")) == []
    assert worker.handle(CallEnded(RELAY_CALL_BASE + 9, "x")) == []
    assert worker.counters.unknown_call == 2


def test_replies_are_bounded_on_main() -> None:
    remote = RemoteSession(RELAY_CALL_BASE, lambda r: None, max_frames=2)
    remote.on_start(INFO)
    for i in range(4):
        remote.receive_frame(frame(i))
    assert remote.overflow == 2
    assert [remote.next_frame(), remote.next_frame(), remote.next_frame()] == [
        frame(2),
        frame(3),
        bytes(FB),
    ]


def test_malformed_event_from_the_worker_is_ignored() -> None:
    got: list[SessionEvent] = []
    remote = RemoteSession(RELAY_CALL_BASE, lambda r: None, on_event=got.append)
    remote.receive_event({"type": "state", "at": 1, "old": "x", "new": "y"})
    remote.receive_event({"type": "from_the_future"})
    assert got == []


def test_worker_lost_marks_its_sessions_and_stops_sending() -> None:
    sent: list[LinkRecord] = []
    main = RemoteSessions()
    a = main.open("w1", sent.append)
    b = main.open("w2", sent.append)
    lost = main.worker_lost("w1")
    assert lost == [a] and a.lost and not b.lost
    a.on_start(INFO)
    a.next_frame()
    b.on_start(INFO)
    assert [type(r) for r in sent] == [RelayedCallStarted]


def test_records_from_another_worker_are_not_routed() -> None:
    main = RemoteSessions()
    remote = main.open("w1", lambda r: None)
    main.handle("w2", Audio((AudioFrame(remote.call, 0, 0, frame(1)),)))
    main.handle("w2", CallEnded(remote.call, "bye"))
    assert remote.received_frames == 0 and remote.hangup_requested is None


def test_call_numbers_wrap_within_the_relay_range_and_skip_those_in_use() -> None:
    main = RemoteSessions()
    main._next = 0xFFFFFFFF
    a = main.open("w", lambda r: None)
    b = main.open("w", lambda r: None)
    assert (a.call, b.call) == (0xFFFFFFFF, RELAY_CALL_BASE)
    main._next = 0xFFFFFFFF
    c = main.open("w", lambda r: None)
    assert c.call == RELAY_CALL_BASE + 1


def test_is_relayed_splits_by_call_number() -> None:
    assert is_relayed(CallEnded(RELAY_CALL_BASE, "x"))
    assert not is_relayed(CallEnded(RELAY_CALL_BASE - 1, "x"))
    assert not is_relayed(Audio(()))
    assert not is_relayed(CallStarted(1, "c", "f", "t", "r", "PCMU/8000", "h:1"))
    assert is_relayed(Dtmf(RELAY_CALL_BASE, "1", 0, "stream"))


def test_end_all_hangs_up_every_session() -> None:
    pair = Pair()
    a = pair.open()
    a.on_start(INFO)
    pair.pump()
    assert pair.worker.end_all("worker stopping") == [CallEnded(a.call, "worker stopping", 0)]
    assert pair.sessions[0].log[-1] == ("hangup", "worker stopping")


# ------------------------------------------------------------------------ over a real socket


async def _link_pair() -> tuple[FrameLink, FrameLink]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    return FrameLink(ra, wa), FrameLink(rb, wb)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_echo_session_over_a_unix_socket_pair(rate: int) -> None:
    """A real EchoSession in the "worker" answers a 20 ms gateway-like tick loop over FrameLink:
    the caller's own audio comes back, 200 ms + one relay frame later, and
    '#' ends the call from the worker side."""
    main_link, worker_link = await _link_pair()
    fb = frame_bytes(rate)

    def factory(info: CallInfo, on_event: Callable[[SessionEvent], None]) -> CallSession:
        return EchoSession(None, sample_rate=info.sample_rate, hangup_digit="#")

    worker = RelayedCalls(factory)

    async def serve_worker() -> None:
        async for record in worker_link.records():
            for reply in worker.handle(record):
                worker_link.send(reply)

    main = RemoteSessions()
    worker_task = asyncio.create_task(serve_worker())

    async def route_main() -> None:
        async for record in main_link.records():
            main.handle("w1", record)

    main_task = asyncio.create_task(route_main())
    remote = main.open("w1", main_link.send)
    remote.on_start(CallInfo("MZ9", "echo", "a", "b", rate, "websocket"))
    out: list[bytes] = []
    for tick in range(40):
        pcm = np.full(fb // 2, tick + 1, dtype="<i2").tobytes()
        remote.on_audio(pcm)
        out.append(remote.next_frame())
        # The gateway's next tick comes 20 ms later; wait for the reply instead of the clock,
        # so a busy machine cannot make the reply late.
        await _until(lambda n=tick + 1: remote.received_frames == n)
    underflows = remote.underflows
    remote.on_dtmf("#")
    for _ in range(50):
        remote.next_frame()
        if remote.hangup_requested is not None:
            break
        await asyncio.sleep(0.02)
    assert remote.hangup_requested is not None
    remote.on_hangup("hangup")
    values = [int(np.frombuffer(f, dtype="<i2")[0]) for f in out]
    # The echo delay is 10 ticks; the relay adds exactly one: frame k comes back at tick k + 11.
    first = values.index(1)
    assert first == 11
    assert values[first : first + 20] == list(range(1, 21))
    assert all(len(f) == fb for f in out)
    assert underflows == 1  # only the first tick
    assert len(worker) == 0
    await main_link.close()
    await worker_task
    await worker_link.close()
    await main_task


# ------------------------------------------------------------------- plugged into the worker


async def test_the_call_worker_hosts_relayed_calls_through_its_relay_hook() -> None:
    """call_worker.relayed_calls: a relayed call gets the worker's own session (the echo line of
    the configuration main sent), each tick record is answered, '#' ends it from the worker."""
    worker = RecordingWorker(relay_factory=relayed_calls)
    call = RELAY_CALL_BASE + 3
    started = RelayedCallStarted(call, "MZ7", "echo", "+1415", "", "twilio", RATE)
    worker.on_record(started)  # before CONFIG: nothing to build the session with
    assert worker.sent == [CallEnded(call, "no agent for this call", 404)]
    worker.sent.clear()
    await configured(worker, echo_config())
    worker.sent.clear()
    worker.on_record(started)
    for tick in range(3):
        worker.on_record(Audio((AudioFrame(call, tick, tick * 160, frame(5)),)))
    replies = [f for r in worker.sent if isinstance(r, Audio) for f in r.frames]
    assert [(f.call, f.seq) for f in replies] == [(call, 0), (call, 1), (call, 2)]
    assert all(len(f.pcm) == FB for f in replies)
    assert any(f.pcm != bytes(FB) for f in replies)  # the echo line's chime
    worker.on_record(Dtmf(call, "#", 0, "stream"))
    assert worker.sent[-1] == CallEnded(call, "dtmf", 0)
    stats = worker.stats()
    assert stats["records_unhandled"] == 0
    assert stats["relay_started"] == 1 and stats["relay_refused"] == 1
    assert stats["relay_calls"] == 0
    worker.on_record(RelayedCallStarted(call + 1, "MZ8", "echo", "", "", "twilio", RATE))
    assert worker.stats()["relay_calls"] == 1
    relay = worker.relay
    assert isinstance(relay, RelayedCalls)
    assert relay.end_all("call worker stopping") == [CallEnded(call + 1, "call worker stopping", 0)]


def test_native_workers_run_for_websocket_only_configurations() -> None:
    """With engine native a websocket agent alone needs the call workers (its sessions run
    there); with pjsua2 it does not (its sessions run in main)."""

    def config(engine: str, sip: bool) -> bool:
        agent: dict[str, object] = {
            "slug": "ws",
            "websocket": {"enabled": True, "secret": "relay-ws-secret-0123456789"},
        }
        if sip:
            agent["sip"] = {
                "enabled": True,
                "numbers": ["+15005550101"],
                "username": "ws",
                "password": "ws-password-123",
            }
        raw = {"server": {"store": "memory", "media": {"engine": engine}}, "agents": [agent]}
        return needs_call_workers(parse_config(json.dumps(raw), env={}))

    assert config("native", sip=False)
    assert not config("pjsua2", sip=False)
    assert config("pjsua2", sip=True)
