"""Non-INVITE server transactions (RFC 3261 §17.2.2), sans-I/O.

The edge answers REGISTER and OPTIONS synchronously, so a transaction here is created and
completed by the same call; what this module adds is the *Completed* state: for Timer J
(64*T1 = 32 s on unreliable transports, 0 on reliable ones) a retransmitted request is answered
by re-sending the stored final response instead of being processed again (RFC 3261 §17.2.2),
which keeps a retransmitted REGISTER from counting twice against its nonce or its CSeq.

Matching (RFC 3261 §17.2.3) uses the branch and sent-by of the top Via and the method. A
retransmission is byte-identical, so the key used here is the raw top Via value, the Call-ID and
the raw CSeq value (which carries the method); this matches RFC 3261 branches and RFC 2543
clients alike without parsing the Via on the hot path.

Time is passed in (``now``); the adapter arms one timer at :meth:`get_timer` and calls
:meth:`handle_timer`. Timer J is the same for every entry of a transport class, so expiry order
equals completion order and two FIFO queues give O(1) insert and expiry.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = [
    "T1",
    "TIMER_J",
    "ServerTransactions",
    "TransactionKey",
    "TransactionMatch",
    "transaction_key",
]

#: RFC 3261 §17.1.1.1: RTT estimate, 500 ms.
T1: Final = 0.5
#: RFC 3261 §17.2.2: Timer J = 64*T1 on unreliable transports (0 on reliable ones).
TIMER_J: Final = 64 * T1

TransactionKey = str
"""The top Via value, Call-ID and CSeq value of a request (see :func:`transaction_key`)."""


def transaction_key(via: str, call_id: str, cseq: str) -> TransactionKey:
    """The key of a request's transaction: its top Via value, Call-ID and CSeq value joined by
    LF, which no header value contains (the parser splits lines on it).

    A string, not a tuple: the table keeps each key for Timer J (~128,000 at 2,000 REGISTERs a
    second), and a string is not an object the garbage collector tracks; a tuple was, with the
    queue record holding it, until a young collection had walked both.
    """
    return f"{via}\n{call_id}\n{cseq}"


@dataclass(frozen=True, slots=True, init=False)
class TransactionMatch:
    """Result of :meth:`ServerTransactions.receive`."""

    is_new: bool
    """True when the request starts a new transaction and must be processed."""
    response: bytes | None = None
    """For a retransmission: the last response to send again (None: absorb silently)."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(self, is_new: bool, response: bytes | None = None) -> None:
        object.__setattr__(self, "is_new", is_new)
        object.__setattr__(self, "response", response)


_NEW: Final = TransactionMatch(is_new=True)
_ABSORB: Final = TransactionMatch(is_new=False)


_Entry = tuple[bytes | None, float]
"""(the last response sent or None, the deadline): a tuple of atoms, which the garbage collector
stops tracking after its first young collection. At 2,000 REGISTERs a second Timer J keeps
~128,000 entries alive; as objects they were walked by every full collection."""


class _ExpiryQueue:
    """(deadline, key) records in deadline order, held as two parallel deques of atoms.

    Not a deque of (deadline, key) tuples: a tuple is an object the garbage collector tracks
    until a young collection has walked it, and a REGISTER made two of them (its pending and
    its completed record), ~8,000 a second at 4,000 registrations a second. Floats and strings
    are not tracked.
    """

    __slots__ = ("deadlines", "keys")

    def __init__(self) -> None:
        self.deadlines: deque[float] = deque()
        self.keys: deque[TransactionKey] = deque()

    def push(self, deadline: float, key: TransactionKey) -> None:
        self.deadlines.append(deadline)
        self.keys.append(key)

    def pop(self) -> tuple[float, TransactionKey]:
        """The oldest record (the queue must not be empty)."""
        return self.deadlines.popleft(), self.keys.popleft()


class ServerTransactions:
    """Table of live non-INVITE server transactions.

    Args:
        timer_j: how long a completed transaction on an unreliable transport keeps answering
            retransmissions.
        trying_timeout: safety limit for a transaction that never gets a final response (the
            application lost it); such an entry is dropped after this many seconds.
        max_entries: hard cap; when reached the oldest completed entries are dropped early, so a
            flood cannot grow memory without bound.
    """

    def __init__(
        self,
        *,
        timer_j: float = TIMER_J,
        trying_timeout: float = TIMER_J,
        max_entries: int = 500_000,
    ) -> None:
        self._timer_j = timer_j
        self._trying_timeout = trying_timeout
        self._max_entries = max_entries
        self._entries: dict[TransactionKey, _Entry] = {}
        # (deadline, key) in deadline order: one queue per constant timeout. A record is
        # current while its entry still has that deadline (an entry that moved from pending
        # to completed, was evicted, or ended and was started again leaves a stale record).
        self._completed = _ExpiryQueue()
        self._pending = _ExpiryQueue()

    def __len__(self) -> int:
        return len(self._entries)

    def receive(self, key: TransactionKey, *, now: float) -> TransactionMatch:
        """Match an incoming request against the table (RFC 3261 §17.2.3).

        A new request creates a transaction in the *Trying* state and returns ``is_new``.
        A retransmission returns the response to re-send, or nothing while none was sent.
        """
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                self._evict_one()
            deadline = now + self._trying_timeout
            self._entries[key] = (None, deadline)
            self._pending.push(deadline, key)
            return _NEW
        response = entry[0]
        if response is None:
            return _ABSORB
        return TransactionMatch(is_new=False, response=response)

    def respond(
        self, key: TransactionKey, data: bytes, *, status: int, reliable: bool, now: float
    ) -> None:
        """Record the response sent for ``key``.

        A provisional response (1xx) moves the transaction to *Proceeding*; a final one to
        *Completed*, where it stays for Timer J on unreliable transports and ends at once on
        reliable ones (RFC 3261 §17.2.2).
        """
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return
        if status < 200:
            # Proceeding: the Trying deadline still bounds it.
            entries[key] = (data, entry[1])
            return
        # Completed.
        if reliable or self._timer_j <= 0:
            del entries[key]
            return
        deadline = now + self._timer_j
        entries[key] = (data, deadline)
        self._completed.push(deadline, key)

    def forget(self, key: TransactionKey) -> None:
        """Drop a transaction another layer took over (e.g. an INVITE handed to the proxy)."""
        self._entries.pop(key, None)

    def get_timer(self) -> float | None:
        """Absolute time of the next expiry, or None when the table is empty."""
        heads = [q.deadlines[0] for q in (self._completed, self._pending) if q.deadlines]
        return min(heads) if heads else None

    def handle_timer(self, *, now: float) -> int:
        """Drop every transaction whose timer has fired; return how many were dropped."""
        dropped = 0
        for queue in (self._completed, self._pending):
            deadlines = queue.deadlines
            while deadlines and deadlines[0] <= now:
                deadline, key = queue.pop()
                if self._drop_if_current(deadline, key):
                    dropped += 1
        return dropped

    def _evict_one(self) -> None:
        for queue in (self._completed, self._pending):
            while queue.deadlines:
                deadline, key = queue.pop()
                if self._drop_if_current(deadline, key):
                    return

    def _drop_if_current(self, deadline: float, key: TransactionKey) -> bool:
        """Drop the entry of a queue record that is still current (see __init__)."""
        entry = self._entries.get(key)
        if entry is None or entry[1] != deadline:
            return False
        del self._entries[key]
        return True
