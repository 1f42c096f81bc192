"""The connection state machine, driven by a broker and a sandbox wired together in memory."""

from __future__ import annotations

from typing import Any

import pytest

from broker.errors import ProtocolError
from broker.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Call,
    Cancel,
    Connection,
    Error,
    Hello,
    Limits,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
    WarmUp,
    encode_frame,
)


class Pair:
    """A broker-role and a sandbox-role Connection with an in-memory wire between them."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.broker = Connection("broker", limits)
        self.sandbox = Connection("sandbox", limits)

    def to_sandbox(self, msg: Message) -> Message:
        self.sandbox.receive_data(self.broker.send(msg))
        got = self.sandbox.next_event()
        assert self.sandbox.next_event() is None
        return got  # type: ignore[return-value]

    def to_broker(self, msg: Message) -> Message:
        self.broker.receive_data(self.sandbox.send(msg))
        got = self.broker.next_event()
        assert self.broker.next_event() is None
        return got  # type: ignore[return-value]

    def ready(self) -> Pair:
        self.to_broker(Hello(PROTOCOL_VERSION, "deno"))
        return self


def assert_broken(conn: Connection) -> None:
    assert conn.broken
    with pytest.raises(ProtocolError, match="broken"):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="broken"):
        conn.next_event()
    with pytest.raises(ProtocolError, match="broken"):
        conn.send(Cancel(0))


def feed_raw(conn: Connection, wire: dict[str, Any]) -> Message | None:
    """Deliver a frame no honest peer Connection would send."""
    conn.receive_data(encode_frame(wire))
    return conn.next_event()


def test_full_call_with_two_syscalls_a_log_and_a_result() -> None:
    p = Pair()
    assert p.to_broker(Hello(PROTOCOL_VERSION, "deno")) == Hello(PROTOCOL_VERSION, "deno")
    assert p.broker.hello == p.sandbox.hello == Hello(PROTOCOL_VERSION, "deno")
    p.to_sandbox(LoadTool("wc", "ts", "sha256:00", "export default () => 0"))
    assert p.to_sandbox(Call(1, "wc", {"path": "/a"})) == Call(1, "wc", {"path": "/a"})
    assert p.broker.in_flight(1) and p.sandbox.in_flight(1)

    # Two syscalls outstanding at once, answered out of order.
    assert p.to_broker(Syscall(1, 0, "fs.stat", {"path": "/a"})).seq == 0  # type: ignore[union-attr]
    p.to_broker(Syscall(1, 1, "fs.read", {"path": "/a"}))
    assert p.to_sandbox(SyscallResult.success(1, 1, "text")) == SyscallResult(1, 1, True, "text")
    p.to_sandbox(SyscallResult.success(1, 0, {"size": 4}))
    assert p.to_broker(Log(1, "info", "counted")) == Log(1, "info", "counted")
    assert p.to_broker(Result(1, 1)) == Result(1, 1)
    assert not p.broker.in_flight(1) and not p.sandbox.in_flight(1)
    assert not p.broker.broken and not p.sandbox.broken


def test_whole_conversation_in_one_chunk() -> None:
    sandbox = Connection("sandbox")
    broker = Connection("broker")
    data = sandbox.send(Hello(PROTOCOL_VERSION, "wasm"))
    broker.receive_data(data)
    assert broker.next_event() == Hello(PROTOCOL_VERSION, "wasm")
    sandbox.receive_data(broker.send(Call(7, "t", None)))
    assert sandbox.next_event() == Call(7, "t", None)
    data = sandbox.send(Syscall(7, 0, "clock.now", {})) + sandbox.send(Log(7, "info", "x"))
    broker.receive_data(data)
    assert [broker.next_event(), broker.next_event(), broker.next_event()] == [
        Syscall(7, 0, "clock.now", {}),
        Log(7, "info", "x"),
        None,
    ]


def test_interleaved_calls_and_an_error() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "a", None))
    p.to_sandbox(Call(2, "b", None))
    p.to_broker(Syscall(2, 0, "x", {}))
    p.to_broker(Syscall(1, 0, "x", {}))
    p.to_sandbox(SyscallResult.failure(2, 0, ProtocolError("no")))
    p.to_broker(Error(2, "NOT_FOUND", "gone"))
    p.to_sandbox(SyscallResult.success(1, 0, None))
    p.to_broker(Result(1, None))
    assert not p.broker.broken


def test_sandbox_must_say_hello_first() -> None:
    broker = Connection("broker")
    with pytest.raises(ProtocolError, match="hello"):
        feed_raw(broker, {"t": "result", "id": 1, "value": None})
    assert_broken(broker)


@pytest.mark.parametrize("msg", [Call(1, "t", None), LoadTool("t", "ts", "h", ""), Cancel(0),
                                 WarmUp()])
def test_broker_waits_for_hello_before_sending(msg: Message) -> None:
    broker = Connection("broker")
    with pytest.raises(ProtocolError, match="hello"):
        broker.send(msg)
    assert_broken(broker)


def test_sandbox_sends_nothing_before_hello() -> None:
    sandbox = Connection("sandbox")
    with pytest.raises(ProtocolError):
        sandbox.send(Log(1, "info", "x"))


def test_wrong_version_is_refused() -> None:
    broker = Connection("broker")
    broker.receive_data(encode_frame(Hello(PROTOCOL_VERSION + 1, "deno").to_wire()))
    with pytest.raises(ProtocolError, match="version"):
        broker.next_event()
    assert_broken(broker)
    with pytest.raises(ProtocolError, match="version"):
        Connection("sandbox").send(Hello(PROTOCOL_VERSION + 1, "deno"))


def test_second_hello_is_refused() -> None:
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="second hello"):
        feed_raw(p.broker, Hello(PROTOCOL_VERSION, "deno").to_wire())


@pytest.mark.parametrize(
    "wire",
    [
        LoadTool("t", "ts", "h", "").to_wire(),
        Call(1, "t", None).to_wire(),
        SyscallResult.success(1, 0, None).to_wire(),
        Cancel(1).to_wire(),
    ],
    ids=lambda w: w["t"],
)
def test_broker_refuses_to_receive_broker_messages(wire: dict[str, Any]) -> None:
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="does not receive"):
        feed_raw(p.broker, wire)
    assert_broken(p.broker)


@pytest.mark.parametrize(
    "msg", [Hello(1, "deno"), Syscall(1, 0, "x", {}), Result(1, 0), Error(1, "CANCELLED", "")]
)
def test_broker_refuses_to_send_sandbox_messages(msg: Message) -> None:
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="does not send"):
        p.broker.send(msg)
    assert_broken(p.broker)


def test_sandbox_refuses_wrong_directions() -> None:
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="does not send"):
        p.sandbox.send(Call(1, "t", None))
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="does not receive"):
        feed_raw(p.sandbox, Log(1, "info", "x").to_wire())


def test_send_refuses_non_messages() -> None:
    with pytest.raises(ProtocolError):
        Connection("broker").send({"t": "cancel", "id": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wire",
    [
        Syscall(2, 0, "x", {}).to_wire(),
        Log(2, "info", "x").to_wire(),
        Result(2, None).to_wire(),
        Error(2, "CANCELLED", "").to_wire(),
    ],
    ids=lambda w: w["t"],
)
def test_sandbox_messages_need_a_call_in_flight(wire: dict[str, Any]) -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    with pytest.raises(ProtocolError, match="not in flight"):
        feed_raw(p.broker, wire)
    assert_broken(p.broker)


def test_nothing_more_for_a_finished_call() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    p.to_broker(Result(1, None))
    with pytest.raises(ProtocolError, match="not in flight"):
        feed_raw(p.broker, Log(1, "info", "late").to_wire())


def test_call_ids_strictly_increase() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(5, "t", None))
    p.to_broker(Result(5, None))
    with pytest.raises(ProtocolError, match="call id"):
        p.broker.send(Call(5, "t", None))  # reuse of a finished id
    p = Pair().ready()
    p.to_sandbox(Call(5, "t", None))
    with pytest.raises(ProtocolError, match="call id"):
        feed_raw(p.sandbox, Call(3, "t", None).to_wire())


def test_duplicate_pending_syscall_is_refused() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    p.to_broker(Syscall(1, 0, "x", {}))
    with pytest.raises(ProtocolError, match="seq"):
        feed_raw(p.broker, Syscall(1, 0, "x", {}).to_wire())
    assert_broken(p.broker)


def test_syscall_seqs_strictly_increase_per_call() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    p.to_sandbox(Call(2, "t", None))
    p.to_broker(Syscall(1, 4, "x", {}))
    p.to_broker(Syscall(2, 0, "x", {}))  # seqs are per call
    p.to_sandbox(SyscallResult.success(1, 4, None))
    with pytest.raises(ProtocolError, match="seq"):
        p.sandbox.send(Syscall(1, 4, "x", {}))  # answered, but still not reusable


def test_sysret_only_for_a_pending_syscall() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    with pytest.raises(ProtocolError, match="not pending"):
        p.broker.send(SyscallResult.success(1, 0, None))
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    p.to_broker(Syscall(1, 0, "x", {}))
    p.to_sandbox(SyscallResult.success(1, 0, None))
    with pytest.raises(ProtocolError, match="not pending"):
        feed_raw(p.sandbox, SyscallResult.success(1, 0, None).to_wire())  # answered twice
    assert_broken(p.sandbox)


def test_sysret_for_unknown_call() -> None:
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="not in flight"):
        feed_raw(p.sandbox, SyscallResult.success(9, 0, None).to_wire())


def test_call_cannot_finish_with_syscalls_unanswered() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    p.to_broker(Syscall(1, 0, "x", {}))
    with pytest.raises(ProtocolError, match="unanswered"):
        feed_raw(p.broker, Result(1, None).to_wire())


def test_pending_syscalls_are_bounded() -> None:
    p = Pair(Limits(max_pending_syscalls=3)).ready()
    p.to_sandbox(Call(1, "t", None))
    for seq in range(3):
        p.to_broker(Syscall(1, seq, "x", {}))
    with pytest.raises(ProtocolError, match="pending syscalls"):
        feed_raw(p.broker, Syscall(1, 3, "x", {}).to_wire())


def test_pending_count_drops_as_syscalls_are_answered() -> None:
    p = Pair(Limits(max_pending_syscalls=1)).ready()
    p.to_sandbox(Call(1, "t", None))
    for seq in range(10):
        p.to_broker(Syscall(1, seq, "x", {}))
        p.to_sandbox(SyscallResult.success(1, seq, seq))
    p.to_broker(Result(1, None))


def test_cancel_in_flight_and_late_cancel_are_fine() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    assert p.to_sandbox(Cancel(1)) == Cancel(1)
    p.to_broker(Error(1, "CANCELLED", "stopped"))
    # A cancel that crosses the call's end on the wire is harmless on both sides.
    assert p.to_sandbox(Cancel(1)) == Cancel(1)
    assert not p.broker.broken and not p.sandbox.broken


def test_cancel_of_a_call_never_sent() -> None:
    p = Pair().ready()
    p.to_sandbox(Call(1, "t", None))
    with pytest.raises(ProtocolError, match="never sent"):
        p.broker.send(Cancel(2))
    p = Pair().ready()
    with pytest.raises(ProtocolError, match="never sent"):
        feed_raw(p.sandbox, Cancel(0).to_wire())


def test_unencodable_send_raises_but_does_not_break() -> None:
    p = Pair(Limits(max_depth=3)).ready()
    with pytest.raises(ProtocolError, match="nesting"):
        p.broker.send(Call(1, "t", [[[1]]]))
    assert not p.broker.broken
    assert not p.broker.in_flight(1)  # nothing was sent, so nothing changed
    p.to_sandbox(Call(1, "t", [[1]]))


def test_malformed_frame_breaks_the_connection() -> None:
    p = Pair().ready()
    p.broker.receive_data(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(ProtocolError):
        p.broker.next_event()
    assert_broken(p.broker)


def test_oversized_declared_length_breaks_on_receive() -> None:
    broker = Connection("broker")
    with pytest.raises(ProtocolError, match="declared frame length"):
        broker.receive_data(b"\xff\xff\xff\xff")
    assert_broken(broker)


def test_bad_role() -> None:
    with pytest.raises(ValueError):
        Connection("kernel")  # type: ignore[arg-type]
