"""The typed error set of libos, mapped one-to-one to wire codes.

Every failure that crosses the authority boundary is one of these. A sandboxed tool sees the
same codes as exceptions in its own language; the broker never lets another exception type
escape to a caller.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LibosError(Exception):
    """Base of the typed error set. `code` is the wire code."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", **detail: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.detail = detail

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def __reduce__(self) -> tuple[Any, ...]:
        return (error_from_wire, (self.code, self.message))


class NotCapable(LibosError):
    """No capability for the effect, or an attempt to widen authority (escalation)."""

    code = "NOT_CAPABLE"


class ApprovalDenied(LibosError):
    """A person (or the deadline standing in for one) said no."""

    code = "APPROVAL_DENIED"


class InvalidArgument(LibosError):
    """Arguments that fail a schema, a path that cannot be, an illegal request."""

    code = "INVALID_ARGUMENT"


class LimitExceeded(LibosError):
    """Time, memory, fuel, output, rate or budget ran out."""

    code = "LIMIT_EXCEEDED"


class ProtocolError(LibosError):
    """Malformed, oversized or out-of-order frames."""

    code = "PROTOCOL_ERROR"


class SandboxCrashed(LibosError):
    """The sandbox process or instance died while it held the call."""

    code = "SANDBOX_CRASHED"


class NotFound(LibosError):
    code = "NOT_FOUND"


class Conflict(LibosError):
    """The state does not allow it: a version mismatch, an illegal transition, a used grant."""

    code = "CONFLICT"


class Cancelled(LibosError):
    code = "CANCELLED"


class ToolFailed(LibosError):
    """The tool itself failed: an exception in a host function, or an error thrown, raised or
    reported by sandboxed code that is not a typed error it may claim."""

    code = "TOOL_FAILED"


ERRORS: dict[str, type[LibosError]] = {
    cls.code: cls
    for cls in (
        NotCapable,
        ApprovalDenied,
        InvalidArgument,
        LimitExceeded,
        ProtocolError,
        SandboxCrashed,
        NotFound,
        Conflict,
        Cancelled,
        ToolFailed,
    )
}

# Codes that only the broker may produce: they say what the broker did to a call (cancelled
# it, found its frames malformed, saw its sandbox die). Tool code in any language that
# claims one fails with `TOOL_FAILED` instead (`tool_error`), so a tool's failure never looks
# like the broker's verdict.
BROKER_ONLY: frozenset[str] = frozenset({"CANCELLED", "PROTOCOL_ERROR", "SANDBOX_CRASHED"})


def error_from_wire(code: str, message: str = "") -> LibosError:
    """Build the typed error for a wire code; an unknown code is itself a protocol error."""
    cls = ERRORS.get(code)
    if cls is None:
        return ProtocolError(f"unknown error code {code!r}: {message}")
    return cls(message)


def tool_error(code: str, message: str = "") -> LibosError:
    """The typed error for a code that tool code reported as its call's failure: a code the
    tool may claim is itself; a broker-only or unknown code becomes `ToolFailed`, naming what
    was claimed (bounded)."""
    cls = ERRORS.get(code) if isinstance(code, str) else None
    if cls is None or code in BROKER_ONLY:
        claimed = ascii(code)[:40]
        return ToolFailed(f"the tool failed claiming {claimed}: {message}")
    return cls(message)


def exception_text(exc: BaseException) -> str:
    """`str(exc)`, or "(no message)" when its own `__str__` fails or gives no plain str: an
    exception from code that is not the broker's (an embedder's function) cannot fail the
    record of its call. A Ctrl-C landing meanwhile is the person's, and goes on."""
    try:
        text = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return "(no message)"
    return text if type(text) is str else "(no message)"
