"""The frame every ingress and session exchanges: 20 ms of signed 16-bit little-endian mono PCM.

The one definition of the frame length: the websocket tick, the jitter buffer, a session's
outbound queue and the media workers' ports (pjsua2's default ``audioFramePtime``) all use it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FRAME_MS", "frame_bytes"]

FRAME_MS: Final = 20
"""Duration of one frame in milliseconds."""


def frame_bytes(sample_rate: int) -> int:
    """Bytes of one 20 ms s16le mono frame at ``sample_rate`` Hz."""
    return sample_rate * FRAME_MS // 1000 * 2
