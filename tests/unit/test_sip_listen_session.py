"""The receive-only SIP listens session both engines use (pipeline/listening.py
SipListenSession), with a hand-written owner; the owners themselves (main's listens hub for
pjsua2, a call worker's monitored calls for native) are in test_listens.py and
test_listens_events.py."""

from __future__ import annotations

from typing import Any

import pytest

from sipserver.listens.fork import ListenSession as MainListenSession
from sipserver.pipeline.listening import ListenedCall, SipListenSession
from sipserver.pipeline.session import CallInfo
from sipserver.rtp.listens_host import ListenSession as WorkerListenSession
from tests.unit.test_listens import listens_config


class _Pushed:
    """Stands in for a ListenedCall: records what is pushed."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, bytes]] = []

    def push(self, track: str, pcm: bytes) -> None:
        self.pushed.append((track, pcm))


class _OwnedSession(SipListenSession):
    refused_reason = "owner refused"

    def __init__(self, channel: str, *, accept: bool = True) -> None:
        super().__init__(listens_config(channel).agents[0], None)  # type: ignore[arg-type]
        self.accept = accept
        self.opened: list[dict[str, Any]] = []
        self.closed: list[tuple[object, str]] = []
        self.call = _Pushed()

    def _open(self, info: CallInfo, summary: dict[str, Any]) -> ListenedCall | None:
        self.opened.append(summary)
        return self.call if self.accept else None  # type: ignore[return-value]

    def _close(self, call: ListenedCall, reason: str) -> None:
        self.closed.append((call, reason))


INFO = CallInfo("call-1", "a", "sip:+1415@pbx", "sip:+15005550199@127.0.0.1", 16000, "sip")


@pytest.mark.parametrize(
    ("channel", "track"),
    [("inbound", "inbound"), ("outbound", "outbound"), ("both_tracks", "mixed")],
)
def test_the_calls_audio_is_the_channels_track_and_silence_goes_back(
    channel: str, track: str
) -> None:
    session = _OwnedSession(channel)
    session.on_start(INFO)
    (summary,) = session.opened
    assert {k: v for k, v in summary.items() if k != "started_at"} == {
        "call_id": "call-1",
        "agent": "a",
        "number": "+15005550199",
        "caller": "+1415",
        "channel": channel,
        "transport": "sip",
    }
    assert summary["started_at"] > 1.7e9  # wall time: shown on the dashboard
    session.on_audio(b"\x01\x00" * 320)
    session.on_dtmf("5")  # ignored
    assert session.next_frame() == bytes(640)  # 20 ms of silence at 16 kHz
    assert session.call.pushed == [(track, b"\x01\x00" * 320)]
    assert session.hangup_requested is None


def test_hangup_closes_the_monitored_call_once() -> None:
    session = _OwnedSession("inbound")
    session.on_start(INFO)
    session.on_hangup("bye")
    session.on_hangup("bye again")
    session.on_audio(bytes(640))  # after the hangup: dropped
    assert session.closed == [(session.call, "bye")]
    assert session.call.pushed == []


def test_a_refused_call_asks_to_hang_up_and_closes_nothing() -> None:
    session = _OwnedSession("inbound", accept=False)
    session.on_start(INFO)
    assert session.hangup_requested == "owner refused"
    session.on_audio(bytes(640))
    session.on_hangup("bye")
    assert session.closed == []


def test_both_engines_sessions_share_the_base_with_their_own_refusal() -> None:
    assert issubclass(MainListenSession, SipListenSession)
    assert issubclass(WorkerListenSession, SipListenSession)
    assert MainListenSession.refused_reason == "too many monitored calls"
    assert WorkerListenSession.refused_reason == "listens transcription failed"
