"""When is the caller's turn over? Endpointing delay from the turn detector's verdict.

After the VAD reports the end of a speech segment, the session waits before it commits the end
of the caller's turn: ``min_endpointing_delay`` when the turn detector believes the caller is
done (probability at or above its threshold, or a provider-native "end of turn"), otherwise up
to ``max_endpointing_delay``. Both delays count from the moment the caller fell silent, so the
VAD's ``min_silence_duration`` is part of them, not added to them. New speech cancels the wait.
Pure: times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Endpointer", "EndpointingOptions"]


@dataclass(frozen=True, slots=True)
class EndpointingOptions:
    """The two delays of the settings table (seconds)."""

    min_delay: float = 0.5
    """Silence before end of turn when the caller is believed done."""
    max_delay: float = 3.0
    """Silence after which end of turn is forced whatever the turn detector says."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("endpointing delays need 0 <= min_delay <= max_delay")


class Endpointer:
    """Tracks the silence after the last speech segment and the end-of-turn deadline.

    Args:
        options: the delays.
    """

    __slots__ = ("_deadline", "_options", "_silence_since", "probability")

    def __init__(self, options: EndpointingOptions) -> None:
        self._options = options
        self._silence_since: float | None = None
        self._deadline: float | None = None
        self.probability: float | None = None
        """The last verdict's end-of-turn probability (None: silence-only decision)."""

    @property
    def options(self) -> EndpointingOptions:
        """The delays in force."""
        return self._options

    def speech_started(self) -> None:
        """The caller speaks (again): no end of turn is pending."""
        self._silence_since = None
        self._deadline = None
        self.probability = None

    def speech_ended(self, at: float) -> None:
        """The caller fell silent at ``at``; the delay is unknown until :meth:`decide`."""
        self._silence_since = at
        self._deadline = None

    def decide(self, done: bool | None, *, probability: float | None = None) -> float | None:
        """Set the deadline from the turn verdict; returns it (None if no silence is open).

        Args:
            done: True/False from a turn model or STT; None means "no model": the silence
                alone decides, after ``min_delay``.
            probability: the model's probability, kept for events and logs.
        """
        if self._silence_since is None:
            return None
        delay = self._options.max_delay if done is False else self._options.min_delay
        self._deadline = self._silence_since + delay
        self.probability = probability
        return self._deadline

    @property
    def silence_since(self) -> float | None:
        """When the current silence began (None while the caller speaks)."""
        return self._silence_since

    @property
    def deadline(self) -> float | None:
        """When the turn ends unless the caller speaks again (None: not decided yet)."""
        return self._deadline

    def forced_deadline(self) -> float | None:
        """The ``max_delay`` bound of the open silence, whatever the verdict."""
        if self._silence_since is None:
            return None
        return self._silence_since + self._options.max_delay

    def due(self, now: float) -> bool:
        """True once the deadline has passed."""
        return self._deadline is not None and now >= self._deadline
