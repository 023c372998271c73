"""Admission control: the calls in progress per agent and for the whole server, at every door.

Every ingress asks the one :class:`CallLedger` before it takes a call and holds a
:class:`Reservation` for as long as the call lasts:

- SIP INVITE: the edge's router asks :meth:`CallLedger.refusal` in its (sans-I/O) routing
  decision and answers 503 with Retry-After past a limit (the server's before the digest
  challenge, whatever the number; the agent's only after authentication, so that no answer
  before it depends on whether a number exists); the server reserves on the proxy's
  ``CallRouted`` and releases on its ``CallEnded`` (BYE, CANCEL, failure, a lost worker);
- websocket ``/ws``: refused with HTTP 503 and Retry-After before the upgrade;
- Twilio ``/incoming-call``: TwiML ``<Reject reason="busy"/>``;
- AI Listens: the fork websocket is refused like ``/ws``; the webhook dials the human agent
  without the fork (the caller is not turned away because monitoring is full).

Two limits: ``server.max_calls`` (every call of every agent: voice calls, echo lines, listens
forks) and each agent's ``max_concurrent_calls`` (None: only the server limit). Both are read
again on a reload (:meth:`CallLedger.configure`); calls in progress are never cut by a lower
limit, only new ones refused.

The default server capacity is what one core measurably serves for the most expensive kind of
agent in the configuration, times the cores (:func:`default_max_calls`, figures in
:data:`CALLS_PER_CORE`).

A reservation is released exactly once (:meth:`Reservation.release` is idempotent), so a call
that ends twice (a drop during a hangup) cannot count twice, and counts return to 0. The
ledger also lists the calls it holds (:meth:`CallLedger.calls`: id, door, start) for the
console's live view.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Final, Literal

from sipserver.config import Agent, Config, CustomModel

__all__ = [
    "CALLS_PER_CORE",
    "RETRY_AFTER",
    "CallLedger",
    "ModelKind",
    "Refusal",
    "Reservation",
    "cpu_cores",
    "default_max_calls",
    "model_kind",
]

Refusal = Literal["server_full", "agent_full"]
"""Why a new call is not taken: the server's limit, or the agent's."""

ModelKind = Literal["local", "hosted", "echo"]
"""What a call of an agent costs this process: ``local`` models (Whisper, Piper, Smart Turn
on this CPU), ``hosted`` ones (STT/LLM/TTS elsewhere; VAD and the turn model here), or ``echo``
(no model: the gateway or media path alone)."""

CALLS_PER_CORE: Final[dict[ModelKind, int]] = {"local": 2, "hosted": 60, "echo": 150}
"""Calls one core serves with room left for signalling, by model kind. Measured on a 2-core
Xeon VM (bench/README.md, "Capacity"): local-model calls wait more than they compute (a
talking call uses 0.15-0.3 of a core) but what they wait for is serial - one Whisper decode and
one Piper sentence at a time per process - so callers who finish a question together queue:
voice-to-voice p95 1.40 s with 1 call, 1.38 s with 2, 1.64 s with 3 on one core
(bench/sessions.py --local), hence 2, the most that keeps p95 under 1.5 s. VAD and Smart
Turn (45 ms a prediction, one per caller turn) serve 99 sessions per core when the caller ends a
turn every 6 s, 146 every 10 s, 194 every 15 s (bench/sessions.py --standins --turn-every) and
the media path ~700 calls (bench/media_load.py), so a hosted-model call ~100 and an echo line
~290 (the websocket gateway, bench/websocket.py), taken at about 60% to keep the signalling
loop answering within 50 ms."""

RETRY_AFTER: Final = 5
"""Seconds in the Retry-After of a refusal at capacity: a call slot frees when a call ends."""


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def model_kind(config: Config, agent: Agent) -> ModelKind:
    """The model kind of ``agent``'s calls (:data:`ModelKind`)."""
    name = agent.realtime.model
    uses_model = agent.realtime.enabled or agent.listens.enabled
    spec = config.models.get(name) if uses_model and name else None
    if spec is None:
        return "echo"
    if isinstance(spec, CustomModel) and "local" in (
        spec.stt.provider,
        spec.llm.provider,
        spec.tts.provider,
    ):
        return "local"
    return "hosted"


def default_max_calls(config: Config, cores: int | None = None) -> int:
    """``server.max_calls: auto``: :data:`CALLS_PER_CORE` of the most expensive model kind
    among the agents, times ``cores`` (this process's by default)."""
    kinds = {model_kind(config, agent) for agent in config.agents} or {"echo"}
    per_core = min(CALLS_PER_CORE[kind] for kind in kinds)
    return per_core * (cores if cores is not None else cpu_cores())


class Reservation:
    """One call's place in the ledger; :meth:`release` it when the call ends (once is enough:
    later calls do nothing)."""

    __slots__ = ("_ledger", "agent", "call_id", "ingress", "number", "started_at")

    def __init__(
        self,
        ledger: CallLedger,
        agent: str,
        ingress: str,
        *,
        number: int = 0,
        call_id: str | None = None,
        started_at: float = 0.0,
    ) -> None:
        self._ledger: CallLedger | None = ledger
        self.agent = agent
        """The agent's slug."""
        self.ingress = ingress
        """The door the call came in by (``sip``, ``websocket``, ``listens``)."""
        self.number = number
        """The ledger's number for the call (1, 2, ... in order of arrival)."""
        self.call_id = call_id
        """The call's own id when the door knows it (a SIP call's Call-ID), else None."""
        self.started_at = started_at
        """When the place was taken (epoch seconds)."""

    @property
    def label(self) -> str:
        """The call's id (``call_id``), or ``<ingress>-<number>`` without one."""
        return self.call_id or f"{self.ingress}-{self.number}"

    @property
    def held(self) -> bool:
        """True until released."""
        return self._ledger is not None

    def release(self) -> None:
        """Give the call's place back (idempotent)."""
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger._release(self)


class CallLedger:
    """Calls in progress per agent and in total, and the limits they are held to.

    Args:
        config: the configuration whose limits apply (:meth:`configure` on a reload).
        cores: cores for ``server.max_calls: auto`` (this process's by default).
    """

    def __init__(
        self,
        config: Config,
        *,
        cores: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._cores = cores
        self._wall_clock = wall_clock
        self._held: dict[int, Reservation] = {}
        self._numbers = itertools.count(1)
        self.max_calls = 0
        """The server's limit in force."""
        self._agent_limits: dict[str, int | None] = {}
        self._by_agent: dict[str, int] = {}
        self._by_ingress: dict[str, int] = {}
        self.total = 0
        """Calls in progress, every agent and door."""
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take the limits of ``config`` (a reload: live for new calls)."""
        setting = config.server.max_calls
        self.max_calls = (
            default_max_calls(config, self._cores) if setting == "auto" else int(setting)
        )
        self._agent_limits = {a.slug: a.max_concurrent_calls for a in config.agents}

    def limit_of(self, agent: str) -> int | None:
        """``agent``'s own limit (None: only the server's)."""
        return self._agent_limits.get(agent)

    def in_progress(self, agent: str | None = None) -> int:
        """Calls in progress of ``agent`` (None: of the whole server)."""
        return self.total if agent is None else self._by_agent.get(agent, 0)

    def by_ingress(self) -> dict[str, int]:
        """Calls in progress by door."""
        return dict(self._by_ingress)

    def refusal(self, agent: str | None) -> Refusal | None:
        """Why a new call to ``agent`` (None: to any agent, the server's limit alone) cannot be
        taken now, or None when it can."""
        if self.total >= self.max_calls:
            return "server_full"
        if agent is None:
            return None
        limit = self._agent_limits.get(agent)
        if limit is not None and self._by_agent.get(agent, 0) >= limit:
            return "agent_full"
        return None

    def over_limit(self, agent: str) -> bool:
        """True when ``agent`` holds more calls than its limit now allows (a reload lowered
        it): the door may end the newest one (a websocket closes with 1013)."""
        limit = self._agent_limits.get(agent)
        return limit is not None and self._by_agent.get(agent, 0) > limit

    def admit(self, agent: str, ingress: str) -> Reservation | Refusal:
        """Reserve a place for a new call to ``agent``, or say why it is refused
        (:meth:`refusal`)."""
        refusal = self.refusal(agent)
        if refusal is not None:
            return refusal
        return self.reserve(agent, ingress)

    def reserve(self, agent: str, ingress: str, call_id: str | None = None) -> Reservation:
        """Count a call without checking the limits (the check was made when it was routed);
        ``call_id``: the call's own id, when the door knows it (shown by :meth:`calls`)."""
        self.total += 1
        self._by_agent[agent] = self._by_agent.get(agent, 0) + 1
        self._by_ingress[ingress] = self._by_ingress.get(ingress, 0) + 1
        number = next(self._numbers)
        reservation = Reservation(
            self, agent, ingress, number=number, call_id=call_id, started_at=self._wall_clock()
        )
        self._held[number] = reservation
        return reservation

    def calls(self, agent: str | None = None) -> list[Reservation]:
        """The calls in progress (of ``agent``; None: all), oldest first."""
        return [r for r in self._held.values() if agent is None or r.agent == agent]

    def _release(self, reservation: Reservation) -> None:
        self._held.pop(reservation.number, None)
        self.total -= 1
        _decrement(self._by_agent, reservation.agent)
        _decrement(self._by_ingress, reservation.ingress)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
