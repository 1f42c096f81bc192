"""One end of a broker↔sandbox channel as a sans-IO state machine, like h11's Connection.

Both roles track the same state, so each end checks the other. The rules:

- the sandbox speaks first, with a Hello of PROTOCOL_VERSION; nothing else moves before it;
- the broker numbers calls (and checks, `CheckTool`, which are calls of no tool code) with
  strictly increasing ids, so a finished id never comes back;
- Syscall, Log, Result and Error name a call that is in flight; Result or Error finishes it
  and is refused while any of its syscalls is unanswered (each syscall gets one answer);
- a call's syscall seqs strictly increase (so a pending (id, seq) cannot be sent twice), and
  at most `limits.max_pending_syscalls` are unanswered at once;
- a SyscallResult answers a pending (id, seq), once;
- a Cancel names a call id already sent; a late one, crossing the call's Result, is harmless.

A violation, in either direction, is a ProtocolError and breaks the connection for good.
Failing to encode an outgoing message (too big, too deep) is not a violation: nothing was
sent, so it raises ProtocolError but leaves the connection usable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NoReturn

from broker.errors import ProtocolError
from broker.protocol.frames import FrameDecoder, encode_frame
from broker.protocol.limits import DEFAULT_LIMITS, Limits
from broker.protocol.messages import (
    BROKER_TO_SANDBOX,
    PROTOCOL_VERSION,
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
)

Role = Literal["broker", "sandbox"]


class _InFlight:
    """What one call in flight needs remembered: its last seq and unanswered seqs."""

    __slots__ = ("last_seq", "pending")

    def __init__(self) -> None:
        self.last_seq = -1
        self.pending: set[int] = set()


class Connection:
    __slots__ = (
        "_broken",
        "_calls",
        "_decoder",
        "_last_call_id",
        "_limits",
        "_on_receive",
        "_on_send",
        "_pending_total",
        "hello",
        "role",
    )

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS) -> None:
        if role == "broker":
            incoming, outgoing = SANDBOX_TO_BROKER, BROKER_TO_SANDBOX
        elif role == "sandbox":
            incoming, outgoing = BROKER_TO_SANDBOX, SANDBOX_TO_BROKER
        else:
            raise ValueError(f"role must be 'broker' or 'sandbox', got {role!r}")
        self.role: Role = role
        self.hello: Hello | None = None  # the sandbox's Hello, once it has been exchanged
        self._limits = limits
        self._decoder = FrameDecoder(limits)
        self._calls: dict[int, _InFlight] = {}
        self._last_call_id = -1
        self._pending_total = 0
        self._broken: ProtocolError | None = None
        on: dict[type, Callable[[Any], None]] = {
            Hello: self._hello,
            LoadTool: self._need_hello,
            Call: self._call,
            CheckTool: self._call,  # a check is a call that runs no tool code of its own
            Syscall: self._syscall,
            SyscallResult: self._sysret,
            Result: self._finish,
            Error: self._finish,
            Log: self._log,
            Cancel: self._cancel,
            WarmUp: self._need_hello,  # any time after hello: the sandbox stops at a frame
        }
        # One lookup gives both the direction check and the state transition.
        self._on_receive = {cls: on[cls] for cls in incoming}
        self._on_send = {cls: on[cls] for cls in outgoing}

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an unfinished frame; nonzero when the peer's stream ends means truncation."""
        return self._decoder.buffered_bytes

    def in_flight(self, call_id: int) -> bool:
        return call_id in self._calls

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; an impossible frame length fails here, at once."""
        self._check_usable()
        try:
            self._decoder.feed(data)
        except ProtocolError as exc:
            self._break(exc)

    def next_event(self) -> Message | None:
        """The next message from the peer, validated against the state, or None for now."""
        self._check_usable()
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            msg = parse_message(frame)
            on = self._on_receive.get(type(msg))
            if on is None:
                raise ProtocolError(f"a {self.role} does not receive {type(msg).__name__}")
            on(msg)
            return msg
        except ProtocolError as exc:
            self._break(exc)

    def send(self, msg: Message) -> bytes:
        """The frame for `msg`, after checking it is this role's to send in this state."""
        self._check_usable()
        on = self._on_send.get(type(msg))
        if on is None:
            self._break(ProtocolError(f"a {self.role} does not send {type(msg).__name__}"))
        # Encode before touching state: an unencodable value sends nothing and breaks nothing.
        data = encode_frame(msg.to_wire(), self._limits)
        try:
            on(msg)
        except ProtocolError as exc:
            self._break(exc)
        return data

    # -- state -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ProtocolError(f"connection broken: {self._broken.message}")

    def _break(self, exc: ProtocolError) -> NoReturn:
        self._broken = exc
        raise exc

    def _need_hello(self, msg: Message) -> None:
        if self.hello is None:
            raise ProtocolError(f"{type(msg).__name__} before the sandbox's hello")

    def _hello(self, msg: Hello) -> None:
        if self.hello is not None:
            raise ProtocolError("second hello")
        if msg.v != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {msg.v}, expected {PROTOCOL_VERSION}")
        self.hello = msg

    def _call(self, msg: Call) -> None:
        self._need_hello(msg)
        if msg.id <= self._last_call_id:
            raise ProtocolError(f"call id {msg.id} not above the last one, {self._last_call_id}")
        self._last_call_id = msg.id
        self._calls[msg.id] = _InFlight()

    def _in_flight(self, msg: Syscall | SyscallResult | Result | Error | Log) -> _InFlight:
        call = self._calls.get(msg.id)
        if call is None:
            self._need_hello(msg)
            raise ProtocolError(f"{type(msg).__name__} for call {msg.id}, not in flight")
        return call

    def _syscall(self, msg: Syscall) -> None:
        call = self._in_flight(msg)
        if msg.seq <= call.last_seq:
            raise ProtocolError(f"syscall seq {msg.seq} of call {msg.id} not above {call.last_seq}")
        if self._pending_total >= self._limits.max_pending_syscalls:
            raise ProtocolError(f"more than {self._limits.max_pending_syscalls} pending syscalls")
        call.last_seq = msg.seq
        call.pending.add(msg.seq)
        self._pending_total += 1

    def _sysret(self, msg: SyscallResult) -> None:
        pending = self._in_flight(msg).pending
        if msg.seq not in pending:
            raise ProtocolError(f"sysret for syscall ({msg.id}, {msg.seq}), not pending")
        pending.remove(msg.seq)
        self._pending_total -= 1

    def _finish(self, msg: Result | Error) -> None:
        if self._in_flight(msg).pending:
            raise ProtocolError(f"call {msg.id} finished with syscalls unanswered")
        del self._calls[msg.id]

    def _log(self, msg: Log) -> None:
        self._in_flight(msg)

    def _cancel(self, msg: Cancel) -> None:
        self._need_hello(msg)
        if msg.id > self._last_call_id:
            raise ProtocolError(f"cancel for call {msg.id}, never sent")
