"""Message types: field validation, the strict parser, and the encode/decode round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given

from broker.errors import ERRORS, NotFound, ProtocolError
from broker.protocol import (
    BROKER_TO_SANDBOX,
    PROTOCOL_VERSION,
    SANDBOX_TO_BROKER,
    Call,
    Cancel,
    CheckTool,
    Error,
    FrameDecoder,
    Hello,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
    WarmUp,
    encode_frame,
    parse_message,
)
from tests.broker.protocol.strategies import messages

EXAMPLES: list[Message] = [
    Hello(PROTOCOL_VERSION, "deno"),
    LoadTool("wc", "ts", "sha256:00", "export default () => 1"),
    Call(1, "wc", {"path": "/a"}),
    CheckTool(2, "wc"),
    Syscall(1, 0, "fs.read", {"path": "/a"}),
    SyscallResult.success(1, 0, b"bytes"),
    SyscallResult.failure(1, 1, NotFound("no such file")),
    Result(1, [1, 2]),
    Error(1, "CANCELLED", "stopped"),
    Log(1, "info", "hi"),
    Cancel(1),
    WarmUp(),
]


def decode(data: bytes) -> Message:
    dec = FrameDecoder()
    dec.feed(data)
    frame = dec.next_frame()
    assert frame is not None and dec.buffered_bytes == 0
    return parse_message(frame)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_example_round_trips(msg: Message) -> None:
    assert parse_message(msg.to_wire()) == msg
    assert decode(encode_frame(msg.to_wire())) == msg


@given(messages)
def test_any_valid_message_round_trips(msg: Message) -> None:
    wire = msg.to_wire()
    assert parse_message(wire) == msg
    assert decode(encode_frame(wire)) == msg


def test_wire_shapes_are_exact() -> None:
    assert Hello(1, "wasm").to_wire() == {"t": "hello", "v": 1, "kind": "wasm"}
    assert Syscall(2, 3, "x", {}).to_wire() == {
        "t": "syscall",
        "id": 2,
        "seq": 3,
        "name": "x",
        "args": {},
    }
    assert SyscallResult.success(2, 3, None).to_wire() == {
        "t": "sysret",
        "id": 2,
        "seq": 3,
        "ok": True,
        "value": None,
    }
    assert SyscallResult.failure(2, 3, NotFound("gone")).to_wire() == {
        "t": "sysret",
        "id": 2,
        "seq": 3,
        "ok": False,
        "code": "NOT_FOUND",
        "message": "gone",
    }


def test_directions_partition_the_types() -> None:
    assert not SANDBOX_TO_BROKER & BROKER_TO_SANDBOX
    assert {type(m) for m in EXAMPLES} == SANDBOX_TO_BROKER | BROKER_TO_SANDBOX


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Cancel(1).id = 2  # type: ignore[misc]


def test_typed_errors_cross_both_ways() -> None:
    err = Error.from_exception(4, NotFound("gone")).to_exception()
    assert isinstance(err, NotFound) and err.message == "gone"
    sysret = SyscallResult.failure(4, 0, NotFound("gone"))
    assert isinstance(sysret.to_exception(), NotFound)
    assert SyscallResult.success(4, 0, 1).to_exception() is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello(1, "python"),
        lambda: Hello("1", "deno"),
        lambda: Call(-1, "x", None),
        lambda: Call(2**53, "x", None),
        lambda: Call(True, "x", None),
        lambda: Call(1.0, "x", None),
        lambda: Call(1, b"x", None),
        lambda: Syscall(1, 0, "x", []),
        lambda: Syscall(1, -1, "x", {}),
        lambda: SyscallResult(1, 0, 1, None),
        lambda: SyscallResult(1, 0, True, 1, "NOT_FOUND"),
        lambda: SyscallResult(1, 0, False, 1, "NOT_FOUND", ""),
        lambda: SyscallResult(1, 0, False, None, "OOPS", ""),
        lambda: SyscallResult(1, 0, False, None, "NOT_FOUND", None),
        lambda: Error(1, "INTERNAL", ""),
        lambda: Error(1, "NOT_FOUND", 5),
        lambda: Log(1, None, "x"),
        lambda: LoadTool("x", "ts", "h", b"source"),
        lambda: Cancel("1"),
    ],
)
def test_constructors_validate(build: Any) -> None:
    with pytest.raises(ProtocolError):
        build()


def test_every_error_code_is_accepted() -> None:
    for code in ERRORS:
        assert parse_message({"t": "error", "id": 0, "code": code, "message": ""}).code == code


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "cancel",
        {},
        {"t": "nope", "id": 1},
        {"t": 1, "id": 1},
        {"t": ["cancel"], "id": 1},
        {"id": 1},
        {"t": "cancel"},
        {"t": "cancel", "id": 1, "extra": 0},
        {"t": "cancel", "id": 1, 5: 0},
        {"t": "call", "id": 1, "tool": "x"},
        {"t": "sysret", "id": 1, "seq": 0, "value": 1},
        {"t": "sysret", "id": 1, "seq": 0, "ok": None, "value": 1},
        {"t": "sysret", "id": 1, "seq": 0, "ok": True},
        {"t": "sysret", "id": 1, "seq": 0, "ok": True, "value": 1, "message": ""},
        {"t": "sysret", "id": 1, "seq": 0, "ok": False, "code": "NOT_FOUND"},
        {
            "t": "sysret",
            "id": 1,
            "seq": 0,
            "ok": False,
            "code": "NOT_FOUND",
            "message": "",
            "value": None,
        },
    ],
    ids=repr,
)
def test_parse_refuses_malformed_shapes(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_message(obj)
