"""Interruption policy: when caller speech during agent speech stops the agent.

Pure rules over numbers the session measures (speech duration from the VAD, words from interim
STT); the session applies the decisions (clear playout, resume, cancel). Names follow the
settings table of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InterruptionOptions"]


@dataclass(frozen=True, slots=True)
class InterruptionOptions:
    """The ``interruptions`` settings group."""

    allow: bool = True
    """Caller speech may stop the agent; False ignores caller audio while the agent speaks."""
    min_duration: float = 0.5
    """Seconds of caller speech before it can interrupt."""
    min_words: int = 0
    """Words (from interim STT) required as well; 0: duration alone decides."""
    false_timeout: float = 2.0
    """Seconds after the interrupting speech ends within which a transcript must arrive, or the
    interruption was false."""
    resume_false: bool = True
    """After a false interruption the agent resumes where it paused."""

    def should_pause(self, speech_duration: float, words: int | None) -> bool:
        """Decide whether caller speech stops the agent now.

        Args:
            speech_duration: seconds of speech in the caller's current segment.
            words: words recognised so far in that segment (None: no interim result yet).
        """
        if not self.allow or speech_duration < self.min_duration:
            return False
        if self.min_words <= 0:
            return True
        return words is not None and words >= self.min_words

    def is_real(self, words: int) -> bool:
        """A final transcript with ``words`` words makes the interruption real."""
        return words >= max(1, self.min_words)
