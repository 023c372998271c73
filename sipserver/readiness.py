"""Whether the server takes new calls now: starting, ready, not ready or draining.

``GET /healthz`` is liveness (the process answers HTTP). Readiness is what a load balancer, an
orchestrator or a SIP trunk needs: can a call placed now be answered? :class:`Readiness` keeps
the one-shot start-up steps and the drain flag; :meth:`Readiness.report` combines them with
what is true at the moment (media workers up) into a :class:`ReadinessReport`, which
``GET /readyz``, the ``sipserver_ready`` gauge and the edge's INVITE admission all read, so they
cannot disagree. No I/O and no clock: the server feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["MEDIA_WORKERS", "STARTUP_STEPS", "Readiness", "ReadinessReport", "ReadinessStatus"]

ReadinessStatus = Literal["starting", "ready", "not_ready", "draining"]
"""``starting``: never ready yet; ``ready``; ``not_ready``: was ready, a condition went away
(every media worker lost); ``draining``: stopping, new calls refused for good."""

STARTUP_STEPS = ("listeners", "voice_models")
"""One-shot steps of :meth:`Server.start`: SIP and HTTP listeners bound, voice models loaded."""
MEDIA_WORKERS = "media_workers"
"""The live condition: at least one media worker up, when any agent takes SIP calls."""


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """The server's readiness at one moment."""

    status: ReadinessStatus
    """See :data:`ReadinessStatus`."""
    waiting_for: tuple[str, ...]
    """What is not up yet, in start-up order (empty when ready or draining)."""

    @property
    def ready(self) -> bool:
        """True when a new call is taken."""
        return self.status == "ready"

    def as_json(self) -> dict[str, Any]:
        """The body of ``GET /readyz``."""
        return {"status": self.status, "ready": self.ready, "waiting_for": list(self.waiting_for)}


class Readiness:
    """Start-up steps done so far, and whether the server is draining.

    The server calls :meth:`step_done` for each of :data:`STARTUP_STEPS`, :meth:`drain` when a
    stop is asked for, and :meth:`report` whenever it needs the state, passing what it sees now.
    """

    def __init__(self) -> None:
        self._done: set[str] = set()
        self._draining = False
        self._was_ready = False

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called (there is no way back)."""
        return self._draining

    def step_done(self, step: str) -> None:
        """Record that start-up ``step`` (one of :data:`STARTUP_STEPS`) finished."""
        if step not in STARTUP_STEPS:
            raise ValueError(f"unknown start-up step {step!r}")
        self._done.add(step)

    def drain(self) -> None:
        """From now on the server takes no new calls: it is stopping."""
        self._draining = True

    def report(self, *, media_workers_needed: bool, media_workers_up: int) -> ReadinessReport:
        """The readiness now.

        Args:
            media_workers_needed: some agent takes SIP calls (its calls need a media worker).
            media_workers_up: media workers that said HELLO and are still connected.
        """
        if self._draining:
            return ReadinessReport("draining", ())
        waiting = [step for step in STARTUP_STEPS if step not in self._done]
        if media_workers_needed and media_workers_up < 1:
            waiting.append(MEDIA_WORKERS)
        if not waiting:
            self._was_ready = True
            return ReadinessReport("ready", ())
        return ReadinessReport("not_ready" if self._was_ready else "starting", tuple(waiting))
