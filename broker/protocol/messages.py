"""The message types carried in frames, and the one strict parser from wire maps to them.

Every body is a map whose "t" names the type. The field names are the wire keys, so the
TypeScript runtime and WASM guest implement exactly the same shapes. Construction validates
every typed field, so a message that exists is well formed whether parsed or built locally;
the free-form `args` and `value` are checked (depth, key and leaf types, lengths) by the
frame layer when encoded or decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar

from broker.errors import ERRORS, LibosError, ProtocolError, error_from_wire
from broker.protocol.frames import encode_frame

PROTOCOL_VERSION = 1
SANDBOX_KINDS = frozenset({"deno", "wasm", "pyodide"})
# A log line's levels: what a runtime sends (a level is no free text the broker decodes and
# keeps, up to a frame's size, for nothing).
LOG_LEVELS = ("debug", "info", "warn", "error")
# Ids and seqs stay below 2**53 so a JavaScript number holds them exactly.
ID_LIMIT = 1 << 53


def _id(value: Any, name: str) -> None:
    if type(value) is not int or not 0 <= value < ID_LIMIT:
        raise ProtocolError(f"{name} must be an int in [0, 2**53), got {value!r:.40}")


def _str(value: Any, name: str) -> None:
    if type(value) is not str:
        raise ProtocolError(f"{name} must be a str, got {type(value).__name__}")


def _code(value: Any) -> None:
    _str(value, "code")
    if value not in ERRORS:
        raise ProtocolError(f"unknown error code {value!r:.40}")


@dataclass(frozen=True, slots=True)
class Hello:
    """sandbox→broker, first message: protocol version and sandbox kind."""

    T: ClassVar[str] = "hello"
    FIELDS: ClassVar[tuple[str, ...]] = ("v", "kind")
    v: int
    kind: str

    def __post_init__(self) -> None:
        _id(self.v, "v")
        _str(self.kind, "kind")
        if self.kind not in SANDBOX_KINDS:
            raise ProtocolError(f"unknown sandbox kind {self.kind!r:.40}")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "v": self.v, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class LoadTool:
    """broker→sandbox: install a tool's source under a name."""

    T: ClassVar[str] = "load"
    FIELDS: ClassVar[tuple[str, ...]] = ("tool", "lang", "hash", "source")
    tool: str
    lang: str
    hash: str
    source: str

    def __post_init__(self) -> None:
        _str(self.tool, "tool")
        _str(self.lang, "lang")
        _str(self.hash, "hash")
        _str(self.source, "source")

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": "load",
            "tool": self.tool,
            "lang": self.lang,
            "hash": self.hash,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Call:
    """broker→sandbox: invoke a loaded tool; `id` names the call until it finishes."""

    T: ClassVar[str] = "call"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "tool", "args")
    id: int
    tool: str
    args: Any

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _str(self.tool, "tool")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "call", "id": self.id, "tool": self.tool, "args": self.args}


@dataclass(frozen=True, slots=True)
class CheckTool:
    """broker→sandbox: import a loaded tool and find its `run`, without running it (a
    registration checked in the sandbox that will run the tool); `id` names the check as a
    call's id does, and a Result (`{"entry": ...}`) or an Error finishes it."""

    T: ClassVar[str] = "check"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "tool")
    id: int
    tool: str

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _str(self.tool, "tool")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "check", "id": self.id, "tool": self.tool}


@dataclass(frozen=True, slots=True)
class Syscall:
    """sandbox→broker: a primitive requested on behalf of call `id`, numbered `seq`."""

    T: ClassVar[str] = "syscall"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "seq", "name", "args")
    id: int
    seq: int
    name: str
    args: dict[str, Any]

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _id(self.seq, "seq")
        _str(self.name, "name")
        if type(self.args) is not dict:
            raise ProtocolError(f"args must be a map, got {type(self.args).__name__}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": "syscall",
            "id": self.id,
            "seq": self.seq,
            "name": self.name,
            "args": self.args,
        }


@dataclass(frozen=True, slots=True)
class SyscallResult:
    """broker→sandbox: the answer to syscall (`id`, `seq`): a value, or a typed error."""

    T: ClassVar[str] = "sysret"
    OK_FIELDS: ClassVar[tuple[str, ...]] = ("id", "seq", "ok", "value")
    ERR_FIELDS: ClassVar[tuple[str, ...]] = ("id", "seq", "ok", "code", "message")
    id: int
    seq: int
    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _id(self.seq, "seq")
        if self.ok is True:
            if self.code or self.message:
                raise ProtocolError("a successful sysret has no code or message")
        elif self.ok is False:
            _code(self.code)
            _str(self.message, "message")
            if self.value is not None:
                raise ProtocolError("a failed sysret has no value")
        else:
            raise ProtocolError(f"ok must be a bool, got {type(self.ok).__name__}")

    @classmethod
    def success(cls, id: int, seq: int, value: Any) -> SyscallResult:
        return cls(id, seq, True, value)

    @classmethod
    def failure(cls, id: int, seq: int, error: LibosError) -> SyscallResult:
        return cls(id, seq, False, None, error.code, error.message)

    def to_exception(self) -> LibosError | None:
        return None if self.ok else error_from_wire(self.code, self.message)

    def to_wire(self) -> dict[str, Any]:
        if self.ok:
            return {"t": "sysret", "id": self.id, "seq": self.seq, "ok": True, "value": self.value}
        return {
            "t": "sysret",
            "id": self.id,
            "seq": self.seq,
            "ok": False,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Result:
    """sandbox→broker: call `id` returned `value`; the call is finished."""

    T: ClassVar[str] = "result"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "value")
    id: int
    value: Any

    def __post_init__(self) -> None:
        _id(self.id, "id")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "result", "id": self.id, "value": self.value}


@dataclass(frozen=True, slots=True)
class Error:
    """sandbox→broker: call `id` failed with a typed error; the call is finished."""

    T: ClassVar[str] = "error"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "code", "message")
    id: int
    code: str
    message: str

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _code(self.code)
        _str(self.message, "message")

    @classmethod
    def from_exception(cls, id: int, error: LibosError) -> Error:
        return cls(id, error.code, error.message)

    def to_exception(self) -> LibosError:
        return error_from_wire(self.code, self.message)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "error", "id": self.id, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Log:
    """sandbox→broker: a line of output from call `id`."""

    T: ClassVar[str] = "log"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "level", "text")
    id: int
    level: str
    text: str

    def __post_init__(self) -> None:
        _id(self.id, "id")
        _str(self.level, "level")
        if self.level not in LOG_LEVELS:
            raise ProtocolError(f"unknown log level {self.level!r:.40}")
        _str(self.text, "text")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "log", "id": self.id, "level": self.level, "text": self.text}


@dataclass(frozen=True, slots=True)
class Cancel:
    """broker→sandbox: stop call `id`; the sandbox still ends it with a Result or Error."""

    T: ClassVar[str] = "cancel"
    FIELDS: ClassVar[tuple[str, ...]] = ("id",)
    id: int

    def __post_init__(self) -> None:
        _id(self.id, "id")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "cancel", "id": self.id}


@dataclass(frozen=True, slots=True)
class WarmUp:
    """broker→sandbox: a started spare nobody is waiting for may warm its own paths now (the
    TypeScript runtime goes through a check and a call of a tool of its own, answering
    nothing); it stops at the next frame. Never sent to a sandbox wanted at once: its first
    real frame would wait for the round under way."""

    T: ClassVar[str] = "warm"
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"t": "warm"}


Message = (Hello | LoadTool | Call | CheckTool | Syscall | SyscallResult | Result | Error | Log
           | Cancel | WarmUp)

SANDBOX_TO_BROKER: frozenset[type[Message]] = frozenset({Hello, Syscall, Result, Error, Log})
BROKER_TO_SANDBOX: frozenset[type[Message]] = frozenset({LoadTool, Call, CheckTool, SyscallResult,
                                                          Cancel, WarmUp})

# Every type but SyscallResult has one fixed set of keys; sysret has two, chosen by "ok".
_Simple = Hello | LoadTool | Call | CheckTool | Syscall | Result | Error | Log | Cancel | WarmUp
_SIMPLE: dict[str, type[_Simple]] = {
    cls.T: cls
    for cls in (Hello, LoadTool, Call, CheckTool, Syscall, Result, Error, Log, Cancel, WarmUp)
}
_KEYS = {t: frozenset(("t", *cls.FIELDS)) for t, cls in _SIMPLE.items()}


def _getter(fields: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    # itemgetter of several keys returns a tuple, of one key the bare value: wrap that case
    # (and of none, it cannot be made).
    if not fields:
        return lambda obj: ()
    if len(fields) == 1:
        key = fields[0]
        return lambda obj: (obj[key],)
    return itemgetter(*fields)


_FIELD_GETTERS = {t: _getter(cls.FIELDS) for t, cls in _SIMPLE.items()}
_SYSRET_OK_KEYS = frozenset(("t", *SyscallResult.OK_FIELDS))
_SYSRET_ERR_KEYS = frozenset(("t", *SyscallResult.ERR_FIELDS))


def _shape(obj: dict[str, Any], expected: frozenset[str], t: str) -> None:
    if obj.keys() != expected:
        missing = sorted(expected - obj.keys())
        extra = [k for k in obj if k not in expected]
        raise ProtocolError(f"{t!r} message: missing {missing}, unexpected {extra!r:.200}")


def parse_message(obj: Any) -> Message:
    """Validate a decoded frame body and build its message; anything else is ProtocolError."""
    if type(obj) is not dict:
        raise ProtocolError("a message must be a map")
    t = obj.get("t")
    if t == "sysret":
        ok = obj.get("ok")
        if ok is True:
            _shape(obj, _SYSRET_OK_KEYS, t)
            return SyscallResult(obj["id"], obj["seq"], True, obj["value"])
        if ok is False:
            _shape(obj, _SYSRET_ERR_KEYS, t)
            return SyscallResult(obj["id"], obj["seq"], False, None, obj["code"], obj["message"])
        raise ProtocolError("sysret: ok must be a bool")
    cls = _SIMPLE.get(t) if type(t) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {t!r:.40}")
    _shape(obj, _KEYS[t], t)
    return cls(*_FIELD_GETTERS[t](obj))


def unframable(value: Any) -> str | None:
    """Why a syscall's answer `value` could not be framed for a sandbox (nested past a
    frame's depth, past its size, or not encodable: the sandbox's channel would refuse it),
    or None. Framed with the largest `id` and `seq` (the sandbox numbers its syscalls: the
    real ones take up to 16 bytes more than 0s), so one that passes is sent whatever they
    are; an answer within those bytes of the bound is refused though it might have fitted."""
    try:
        encode_frame(SyscallResult.success(ID_LIMIT - 1, ID_LIMIT - 1, value).to_wire())
    except ProtocolError as exc:
        return exc.message
    return None
