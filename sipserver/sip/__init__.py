"""Sans-I/O SIP core: messages, URIs, header values and stream framing (RFC 3261).

No sockets, no clock reads, no threads: adapters in :mod:`sipserver.edge` feed bytes in and send
the bytes that come out.
"""

from sipserver.sip.framing import PING, FramingError, StreamFramer
from sipserver.sip.headers import (
    AGENT_HEADER,
    SRTP_HEADER,
    NameAddr,
    Params,
    Via,
    format_params,
    parse_contacts,
    parse_params,
    split_comma_list,
    unquote,
)
from sipserver.sip.message import (
    REASON_PHRASES,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    canonical_header_name,
    make_response,
    parse_message,
)
from sipserver.sip.uri import SipUri, split_host_port, uri_equal

__all__ = [
    "AGENT_HEADER",
    "PING",
    "REASON_PHRASES",
    "SRTP_HEADER",
    "FramingError",
    "Headers",
    "NameAddr",
    "Params",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "Via",
    "canonical_header_name",
    "format_params",
    "make_response",
    "parse_contacts",
    "parse_message",
    "parse_params",
    "split_comma_list",
    "split_host_port",
    "unquote",
    "uri_equal",
]
