"""Message framing on stream transports (RFC 3261 §18.3), sans-I/O.

On TCP/TLS a message ends ``Content-Length`` bytes after the empty line that closes its header
section, so Content-Length is mandatory there. CRLFs between messages are ignored
(RFC 3261 §7.5), except that a double CRLF is the keepalive *ping* of RFC 5626 §3.5.1: it is
returned as ``b"\\r\\n\\r\\n"`` and the adapter answers with a single CRLF *pong*.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PING", "FramingError", "StreamFramer"]

#: RFC 5626 §3.5.1 keepalive ping, returned by :meth:`StreamFramer.feed` as its own item.
PING: Final = b"\r\n\r\n"


class FramingError(ValueError):
    """The stream cannot be framed any further; the connection should be closed.

    Attributes:
        reason: short human reason ("Missing Content-Length", "Message too large"...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _header_end(buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """(end of header section, start of body) of the message at ``start``; (-1, -1) if none."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


def _content_length(head: bytes) -> int:
    """Content-Length of a header section (long or compact ``l`` form, any case)."""
    low = head.lower()
    found: set[bytes] = set()
    size = len(low)
    for key in (b"\ncontent-length", b"\nl"):
        i = low.find(key)
        while i >= 0:
            k = i + len(key)
            while k < size and low[k] in b" \t":
                k += 1
            if k < size and low[k] == 0x3A:  # ':'
                eol = low.find(b"\n", k)
                found.add(head[k + 1 : eol if eol >= 0 else size].strip(b" \t\r"))
            i = low.find(key, i + 1)
    if not found:
        raise FramingError("Missing Content-Length")
    if len(found) > 1:
        raise FramingError("Conflicting Content-Length values")
    value = found.pop()
    if not value.isdigit() or len(value) > 10:
        raise FramingError("Invalid Content-Length")
    return int(value)


class StreamFramer:
    """Cuts a byte stream into SIP messages.

    Args:
        max_message_size: largest message (header section plus body) accepted; a larger one
            is a :class:`FramingError`.
    """

    __slots__ = ("_buffer", "_max", "_scanned")

    def __init__(self, max_message_size: int = 65535) -> None:
        # Bytes of an incomplete message. A bytearray, so that a message trickling in through
        # many small reads costs linear time, not a copy of the whole buffer per read.
        self._buffer = bytearray()
        self._max = max_message_size
        self._scanned = 0  # bytes of the pending message already searched for the empty line

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return every message completed by them, in order.

        Returns:
            Complete messages (header section plus exactly Content-Length body bytes), and
            :data:`PING` for each keepalive ping.

        Raises:
            FramingError: missing, invalid or conflicting Content-Length, or a message larger
                than ``max_message_size``.
        """
        buf: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data if isinstance(data, bytes) else bytes(data)  # common case: no copy
        out: list[bytes] = []
        pos = 0
        size = len(buf)
        while pos < size:
            first = buf[pos]
            if first == 0x0D or first == 0x0A:
                # RFC 3261 §7.5 and RFC 5626 §3.5.1: CRLFs before a start line.
                if buf.startswith(PING, pos):
                    out.append(PING)
                    pos += 4
                elif first == 0x0A:
                    pos += 1
                elif size - pos < 4 and PING.startswith(buf[pos:]):
                    break  # maybe the start of a ping: wait for more
                else:
                    pos += 2 if buf.startswith(b"\r\n", pos) else 1
                self._scanned = 0
                continue
            search_from = max(pos, pos + self._scanned - 3)
            head_end, body_start = _header_end(buf, search_from)
            if head_end < 0:
                if size - pos > self._max:
                    raise FramingError("Message too large")
                self._scanned = size - pos
                break
            length = _content_length(bytes(buf[pos:head_end]))
            end = body_start + length
            if end - pos > self._max:
                raise FramingError("Message too large")
            if end > size:
                self._scanned = head_end - pos  # the header section is known to be complete
                break
            out.append(bytes(buf[pos:end]))
            pos = end
            self._scanned = 0
        if buf is self._buffer:
            del self._buffer[:pos]
        elif pos < size:
            self._buffer = bytearray(buf[pos:])
        return out
