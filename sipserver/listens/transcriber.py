"""The transcription of a monitored call: moved to :mod:`sipserver.pipeline.listening` (a call
worker runs it too); these names stay importable from here."""

from sipserver.pipeline.listening import (
    SPEAKERS,
    SUGGESTING_SPEAKERS,
    ListenedCall,
    sip_speakers_for,
    speakers_for,
)

__all__ = ["SPEAKERS", "SUGGESTING_SPEAKERS", "ListenedCall", "sip_speakers_for", "speakers_for"]
