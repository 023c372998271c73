"""AI Listens pieces without sockets: passwords, suggestions, the hub, TwiML, SIP routing and
the receive-only SIP session."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import yaml

from sipserver.config import parse_config
from sipserver.gateway import twilio
from sipserver.listens.dashboard import LoginSessions, _safe_next
from sipserver.listens.fork import ListenSession, ListensFork, called_number
from sipserver.listens.monitor import CallSummary, ListensHub
from sipserver.listens.passwords import hash_password, verify_password
from sipserver.listens.suggestions import NO_SUGGESTION, SuggestionEngine
from sipserver.listens.transcriber import speakers_for
from sipserver.observability import Metrics
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LlmChunk,
    TextDelta,
    ToolSpec,
    Transcript,
)
from sipserver.pipeline.runtime import ListenParts
from sipserver.pipeline.segmenter import SpeechEnded, VadOptions
from sipserver.pipeline.session import CallInfo
from sipserver.server import Server
from tests.unit.test_router import request, send

KB = KnowledgeBase.from_texts(
    {
        "kb/pricing.md": "# Pricing\n\nStarter costs 19 dollars a month; Business 99 dollars.",
        "kb/hours.md": "# Opening hours\n\nWe are open from 9 to 5, Monday to Friday.",
    }
)

# --- passwords ---------------------------------------------------------------------------------


def test_scrypt_hash_round_trip_and_salted() -> None:
    first, second = hash_password("s3cret", n=1024), hash_password("s3cret", n=1024)
    assert first.startswith("scrypt$1024$8$1$") and first != second
    assert verify_password("s3cret", first) and not verify_password("s3cret!", first)


def test_pbkdf2_sha256_hashes_are_accepted() -> None:
    key = base64.b64encode(hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1000)).decode()
    assert verify_password("pw", f"pbkdf2_sha256$1000$salt${key}")
    assert not verify_password("px", f"pbkdf2_sha256$1000$salt${key}")


@pytest.mark.parametrize(
    "encoded",
    ["scrypt$abc", "scrypt$1000$8$1$c2FsdA$a2V5", "scrypt$1024$8$1$!!$a2V5", "md5$x", "", "$$$"],
)
def test_malformed_hashes_never_match(encoded: str) -> None:
    assert verify_password("anything", encoded) is False


# --- suggestions -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_offline_suggestion_is_the_best_passage_with_its_source() -> None:
    engine = SuggestionEngine(KB, clock=Clock())
    suggestion = await engine.suggest("How much does it cost?")
    assert suggestion is not None and suggestion.mode == "passage"
    assert "19 dollars" in suggestion.text
    assert [(s.title, s.source) for s in suggestion.sources] == [("Pricing", "pricing.md")]
    assert await engine.suggest("Okay, sure.") is None
    assert engine.skipped["no_passage"] == 1


async def test_suggestions_are_rate_limited_and_deduplicated() -> None:
    clock = Clock()
    engine = SuggestionEngine(KB, min_interval=3.0, clock=clock)
    assert await engine.suggest("What does it cost?") is not None
    clock.now = 1.0
    assert await engine.suggest("When are you open?") is None  # too soon
    clock.now = 5.0
    assert await engine.suggest("What is the price again?") is None  # same passage again
    assert await engine.suggest("When are you open?") is not None
    assert engine.skipped == {"rate_limited": 1, "duplicate": 1}


async def test_follow_up_uses_the_previous_utterance_for_the_topic() -> None:
    engine = SuggestionEngine(KB, clock=Clock())
    assert await engine.suggest("I have a question about your prices") is not None
    engine.min_interval = 0
    engine._recent.clear()
    suggestion = await engine.suggest("and for business?")
    assert suggestion is not None and "99 dollars" in suggestion.text


class FakeLlm:
    name = "fake"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.seen: list[ChatMessage] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        self.seen = list(messages)
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield TextDelta(word + " ")


async def test_llm_suggestion_is_streamed_and_grounded() -> None:
    llm = FakeLlm("Tell them Starter is 19 dollars a month.")
    engine = SuggestionEngine(KB, llm, clock=Clock())
    pieces: list[str] = []
    suggestion = await engine.suggest("How much is it?", on_delta=pieces.append)
    assert suggestion is not None and suggestion.mode == "llm"
    assert suggestion.text == "Tell them Starter is 19 dollars a month."
    assert "".join(pieces).strip() == suggestion.text and len(pieces) > 3
    assert "19 dollars" in llm.seen[0].content and "pricing.md" in llm.seen[0].content
    assert suggestion.sources[0].source == "pricing.md"


async def test_llm_may_decline() -> None:
    engine = SuggestionEngine(KB, FakeLlm(NO_SUGGESTION), clock=Clock())
    assert await engine.suggest("How much is it?") is None
    assert engine.skipped["llm_declined"] == 1


# --- hub ---------------------------------------------------------------------------------------


def summary(call_id: str = "c1", agent: str = "a") -> CallSummary:
    return CallSummary(call_id, agent, "+15005550199", "+1415", "inbound", "twilio", 1.0)


async def test_history_is_bounded_and_a_late_viewer_catches_up() -> None:
    hub = ListensHub(history_limit=3)
    call = hub.open(summary())
    assert call is not None
    for i in range(5):
        call.publish("transcript", {"text": str(i)})
    call.publish("suggestion_delta", {"text": "x"})  # live only
    backlog, sub = call.subscribe()
    assert [item.data["text"] for item in backlog] == ["2", "3", "4"]
    after, _ = call.subscribe(after=4)
    assert [item.seq for item in after] == [5]
    call.publish("suggestion", {"text": "s"})
    assert (await sub.get(1)).kind == "suggestion"
    call.end("stop")
    assert (await sub.get(1)).kind == "ended" and await sub.get(1) is None
    assert hub.get("c1") is None and hub.active == 0


async def test_a_slow_viewer_is_dropped_not_buffered_forever() -> None:
    hub = ListensHub()
    call = hub.open(summary())
    assert call is not None
    _, sub = call.subscribe()
    for i in range(300):
        call.publish("transcript", {"text": str(i)})
    assert sub.overflowed and call.viewers == 0
    got = []
    while (item := await sub.get(1)) is not None:
        got.append(item)
    assert len(got) < 300  # it reconnects and catches up from the history instead


async def test_call_list_viewers_see_calls_come_and_go() -> None:
    hub = ListensHub(max_calls=1)
    sub = hub.watch_list("a")
    assert await sub.get(1) == []
    call = hub.open(summary())
    assert call is not None and hub.open(summary("c2")) is None  # max_calls
    assert [c["call_id"] for c in await sub.get(1)] == ["c1"]
    assert hub.calls_of("b") == []
    call.end()
    assert await sub.get(1) == []


# --- dashboard helpers -------------------------------------------------------------------------


def test_only_local_dashboard_paths_are_redirect_targets() -> None:
    assert _safe_next("/dashboard/agents/x/listens") == "/dashboard/agents/x/listens"
    for bad in ("https://evil.example/dashboard", "//evil.example/dashboard", "/admin", "/\\x"):
        assert _safe_next(bad) == ""


def test_sessions_expire_are_bounded_and_follow_the_users() -> None:
    config = parse_config(
        yaml.safe_dump(
            {"users": [{"name": "u", "role": "viewer", "password_hash": "scrypt$1$1$1$a$b"}]}
        )
    )
    sessions = LoginSessions(ttl=10, limit=2)
    user = config.users[0]
    tokens = [sessions.create(user, now=0) for _ in range(3)]
    assert len(sessions) == 2 and sessions.get(tokens[0], config, 1) is None
    assert sessions.get(tokens[2], config, 1) is not None
    assert sessions.get(tokens[2], config, 11) is None  # expired
    other = parse_config(yaml.safe_dump({"users": []}))
    assert sessions.get(tokens[1], other, 1) is None  # the user left the configuration


# --- TwiML -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forward_to", "path"), [("+15005550123", "Dial/Number"), ("sip:desk@pbx.example", "Dial/Sip")]
)
def test_fork_twiml(forward_to: str, path: str) -> None:
    root = ET.fromstring(twilio.fork_twiml("wss://h/s", "both_tracks", forward_to, {"a": "1"}))
    stream = root.find("Start/Stream")
    assert stream is not None and stream.get("track") == "both_tracks"
    assert stream.get("url") == "wss://h/s"
    assert [p.get("name") for p in stream.findall("Parameter")] == ["a"]
    assert root.find("Connect") is None
    dial = root.find(path)
    assert dial is not None and dial.text == forward_to


def test_reject_twiml_and_speaker_labels() -> None:
    assert ET.fromstring(twilio.reject_twiml()).find("Reject") is not None
    assert speakers_for("both_tracks") == {"inbound": "caller", "outbound": "agent"}
    assert speakers_for("outbound") == {"outbound": "agent"}
    assert called_number("<sip:+15005550199@127.0.0.1:5060;user=phone>") == "+15005550199"
    assert called_number("tel:+15005550199") == "+15005550199"


# --- SIP ---------------------------------------------------------------------------------------


def listens_config(channel: str = "inbound") -> Any:
    raw = {
        "server": {"store": "memory", "sip": {"udp": ["127.0.0.1:5060"], "tcp": []}},
        "models": {"m": {"type": "custom"}},
        "agents": [
            {
                "slug": "a",
                "realtime": {"enabled": False, "model": "m"},
                "websocket": {"enabled": False, "secret": "listens-secret-0123456789"},
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550101"],
                    "username": "a",
                    "password": "a-password-1",
                    "allowed_ips": ["203.0.113.0/24"],
                },
                "listens": {"enabled": True, "numbers": ["+15005550199"], "channel": channel},
            }
        ],
    }
    return parse_config(yaml.safe_dump(raw), env={})


async def test_sip_call_to_a_listens_number_is_received_silently_and_monitored() -> None:
    server = Server(listens_config())
    assert server.router.listens_agent_for_number("15005550199") is not None
    assert server.router.agent_for_number("+15005550199") is None  # not a registration AOR
    info = CallInfo("call-1", "a", "sip:+1415@pbx", "sip:+15005550199@127.0.0.1", 8000, "sip")
    session = server._new_session(info)
    assert isinstance(session, ListenSession)
    session.on_start(info)
    calls = server.listens_hub.calls_of("a")
    assert [(c.number, c.transport, c.channel) for c in calls] == [
        ("+15005550199", "sip", "inbound")
    ]
    for _ in range(50):
        session.on_audio(bytes(320))
        assert session.next_frame() == bytes(320)
    session.on_hangup("bye")
    for _ in range(100):
        if not server.listens_hub.active:
            break
        await asyncio.sleep(0.02)
    assert server.listens_hub.active == 0
    # The same agent's own SIP number still gets its usual session (no voice: echo line).
    other = CallInfo("call-2", "a", "sip:+1415@pbx", "sip:+15005550101@127.0.0.1", 8000, "sip")
    assert not isinstance(server._new_session(other), ListenSession)
    await server.voice.close()


def test_listens_numbers_are_routed_through_the_agents_acl() -> None:
    server = Server(listens_config())

    def invite(number: str) -> int:
        raw = request("INVITE", number, uri=f"sip:{number}@127.0.0.1", call_id=number)
        return send(server.router, raw).status

    assert invite("+15005550199") == 403  # routed to the agent; 198.51.100.7 is not allowed
    # Not a number of anyone: answered alike, since no agent admits 198.51.100.7 (no probing).
    assert invite("+15005550177") == 403


class _OneUtteranceStream:
    """A VAD stream that turns every pushed frame into a finished utterance."""

    sample_rate = 8000
    speaking = False

    def __init__(self) -> None:
        self.events: list[SpeechEnded] = []

    def push(self, pcm: bytes) -> None:
        self.events.append(SpeechEnded(time=0.0, audio=pcm, speech_duration=0.02))

    def next_event(self) -> SpeechEnded | None:
        return self.events.pop(0) if self.events else None


class _FakeVad:
    def open_stream(self, options: VadOptions) -> _OneUtteranceStream:
        return _OneUtteranceStream()

    def close_stream(self, stream: _OneUtteranceStream) -> None:
        pass


class _FakeStt:
    sample_rate = 8000

    def __init__(self) -> None:
        self.prompts: list[str | None] = []
        """The prompt of each decode."""

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> Transcript:
        self.prompts.append(prompt)
        return Transcript("How much does it cost?")


@pytest.mark.parametrize(
    ("channel", "speaker", "suggested"),
    [("inbound", "caller", True), ("outbound", "agent", False), ("both_tracks", "mixed", True)],
)
async def test_sip_listens_call_transcribes_its_one_stream_as_the_channel_says(
    channel: str, speaker: str, suggested: bool
) -> None:
    """A SIP listens call is one RTP stream: the caller's, the human agent's, or both parties
    mixed by the PBX; ``listens.channel`` says which (it was ignored: always the caller)."""
    config = listens_config(channel)
    agent = config.agents[0]
    parts = ListenParts(_FakeStt(), _FakeVad(), VadOptions(sample_rate=8000), KB, None)  # type: ignore[arg-type]
    hub = ListensHub()
    fork = ListensFork(lambda: config, lambda a: parts, hub, Metrics())
    session = fork.sip_session(agent)
    assert session is not None
    info = CallInfo("call-1", "a", "sip:+1415@pbx", "sip:+15005550199@127.0.0.1", 8000, "sip")
    session.on_start(info)
    (summary,) = hub.calls_of("a")
    assert (summary.channel, summary.transport) == (channel, "sip")
    monitored = hub.get("call-1")
    assert monitored is not None
    _, subscription = monitored.subscribe()
    session.on_audio(bytes(320))
    session.on_hangup("bye")  # the transcription finishes before the call ends
    items = [await subscription.get(timeout=5)]
    while items[-1].kind != "ended":
        items.append(await subscription.get(timeout=5))
    assert hub.active == 0
    transcripts = [i.data for i in items if i.kind == "transcript"]
    assert [t["speaker"] for t in transcripts] == [speaker]
    assert any(i.kind == "suggestion" for i in items) is suggested


@pytest.mark.parametrize("vocabulary", [None, "Lakeside Voice: Pricing, PBX, Twilio."])
async def test_a_listened_call_is_decoded_with_the_agent_s_vocabulary(
    vocabulary: str | None,
) -> None:
    config = listens_config("inbound")
    stt = _FakeStt()
    parts = ListenParts(stt, _FakeVad(), VadOptions(sample_rate=8000), KB, None, vocabulary)  # type: ignore[arg-type]
    hub = ListensHub()
    session = ListensFork(lambda: config, lambda a: parts, hub, Metrics()).sip_session(
        config.agents[0]
    )
    assert session is not None
    session.on_start(CallInfo("call-1", "a", "sip:+1", "sip:+15005550199@h", 8000, "sip"))
    monitored = hub.get("call-1")
    assert monitored is not None
    _, subscription = monitored.subscribe()
    session.on_audio(bytes(320))
    session.on_hangup("bye")
    while (await subscription.get(timeout=5)).kind != "ended":
        pass
    assert stt.prompts == [vocabulary]  # the vocabulary alone: no agent question to add
