"""One registrar binding (RFC 3261 §10.2.1), on its own so that the build compiles it.

:mod:`sipserver.registrar.bindings` holds the stores and re-exports :class:`Binding`; the stores
stay interpreted (tests subclass them), while a binding is built for every REGISTER.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Binding"]


@dataclass(slots=True, frozen=True, init=False)
class Binding:
    """One registered contact of an address-of-record (RFC 3261 §10.2.1)."""

    aor: str
    """Address-of-record key, already canonical, e.g. ``"sip:demo@127.0.0.1"``."""
    contact: str
    """Contact URI as given, without ``<>`` and without header params."""
    expires_at: float
    """Absolute expiry, on the same clock as ``now`` (epoch seconds in production)."""
    registered_at: float
    """When the binding was created; a refresh keeps it."""
    call_id: str
    """Call-ID of the REGISTER that last created or refreshed it (RFC 3261 §10.3 step 8)."""
    cseq: int
    """CSeq number of that REGISTER."""
    q: float | None = None
    """The ``;q`` Contact parameter, None when absent."""
    agent: str = ""
    """Slug of the agent owning the AOR."""
    source: str = ""
    """Where the REGISTER came from, e.g. ``"udp:203.0.113.7:5060"``: requests go there (NAT)."""
    path: tuple[str, ...] = ()
    """Path header values (RFC 3327), outermost first."""
    user_agent: str | None = None
    """User-Agent header of the REGISTER."""
    instance: str | None = None
    """``+sip.instance`` (RFC 5626); when both sides have one, bindings match by it."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        aor: str,
        contact: str,
        expires_at: float,
        registered_at: float,
        call_id: str,
        cseq: int,
        q: float | None = None,
        agent: str = "",
        source: str = "",
        path: tuple[str, ...] = (),
        user_agent: str | None = None,
        instance: str | None = None,
    ) -> None:
        object.__setattr__(self, "aor", aor)
        object.__setattr__(self, "contact", contact)
        object.__setattr__(self, "expires_at", expires_at)
        object.__setattr__(self, "registered_at", registered_at)
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "cseq", cseq)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "agent", agent)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "user_agent", user_agent)
        object.__setattr__(self, "instance", instance)

    def expires_in(self, now: float) -> int:
        """Remaining lifetime in whole seconds, for ``;expires=`` in a 200 (RFC 3261 §10.3 step 8).

        Rounded up, so an unexpired binding never reports 0 (which a UA reads as "removed");
        up to half a microsecond over a whole second is float noise in ``now + expires`` and
        rounds down, so that it does not turn 3600 into 3601. (That is ``ceil(round(x, 6))``
        without the decimal rounding, which cost ~1.4 k instructions a contact compiled.)

        Args:
            now: current time, same clock as ``expires_at``.

        Returns:
            Seconds until expiry, 0 when already expired.
        """
        remaining = self.expires_at - now
        if remaining <= 0.0:
            return 0
        return math.ceil(remaining - 5e-7)
