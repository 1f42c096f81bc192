"""Sans-IO framing and message types for the broker↔sandbox channel.

Bytes in, messages out, and back; no I/O, no trio, no sandbox. The byte format is pinned by
`tests/vectors/frames.json`, which the TypeScript runtime checks too.
"""

from broker.protocol.connection import Connection, Role
from broker.protocol.frames import (
    PREFIX_BYTES,
    FrameDecoder,
    body_decoder,
    check_encodable,
    decode_body,
    encode_frame,
    pack,
)
from broker.protocol.limits import DEFAULT_LIMITS, Limits
from broker.protocol.messages import (
    BROKER_TO_SANDBOX,
    ID_LIMIT,
    LOG_LEVELS,
    PROTOCOL_VERSION,
    SANDBOX_KINDS,
    SANDBOX_TO_BROKER,
    Call,
    Cancel,
    CheckTool,
    Error,
    Hello,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
    WarmUp,
    parse_message,
    unframable,
)

__all__ = [
    "BROKER_TO_SANDBOX",
    "DEFAULT_LIMITS",
    "ID_LIMIT",
    "LOG_LEVELS",
    "PREFIX_BYTES",
    "PROTOCOL_VERSION",
    "SANDBOX_KINDS",
    "SANDBOX_TO_BROKER",
    "Call",
    "Cancel",
    "CheckTool",
    "Connection",
    "Error",
    "FrameDecoder",
    "Hello",
    "Limits",
    "LoadTool",
    "Log",
    "Message",
    "Result",
    "Role",
    "Syscall",
    "SyscallResult",
    "WarmUp",
    "body_decoder",
    "check_encodable",
    "decode_body",
    "encode_frame",
    "pack",
    "parse_message",
    "unframable",
]
