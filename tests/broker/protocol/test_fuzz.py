"""Hostile input: random and mutated bytes, in any chunking, yield messages or ProtocolError.

Never another exception, never a hang (every frame costs at least 5 bytes, so the work is
bounded by the input), and never more buffered than one frame's worth.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ProtocolError
from broker.protocol import (
    DEFAULT_LIMITS,
    PREFIX_BYTES,
    PROTOCOL_VERSION,
    Call,
    Cancel,
    Connection,
    Error,
    FrameDecoder,
    Hello,
    Limits,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
    encode_frame,
    parse_message,
)
from tests.broker.protocol.strategies import values

SMALL = Limits(
    max_frame_bytes=256,
    max_array_len=8,
    max_map_len=8,
    max_str_len=64,
    max_bin_len=64,
    max_depth=4,
    max_pending_syscalls=4,
)
limits_st = st.sampled_from([DEFAULT_LIMITS, SMALL])


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[at:]
    return bytes(buf)


# A broker (role) fed by a scripted sandbox, and a sandbox fed by a scripted broker.


def sandbox_stream() -> bytes:
    msgs: list[Message] = [
        Hello(PROTOCOL_VERSION, "deno"),
        Syscall(1, 0, "fs.read", {"path": "/a", "n": [1, 2.5, None, True]}),
        Log(1, "info", "reading ü"),
        Result(1, {"ok": b"\x00"}),
        Syscall(2, 0, "clock.now", {}),
        Error(2, "NOT_FOUND", "gone"),
    ]
    return b"".join(encode_frame(m.to_wire()) for m in msgs)


def broker_stream() -> bytes:
    msgs: list[Message] = [
        LoadTool("t", "ts", "h", "src"),
        Call(1, "t", {"x": [1, {"y": None}]}),
        SyscallResult.success(1, 0, "value"),
        Call(2, "t", None),
        Cancel(2),
        SyscallResult.failure(2, 0, ProtocolError("no")),
    ]
    return b"".join(encode_frame(m.to_wire()) for m in msgs)


def drive(conn: Connection, chunks: list[bytes], limits: Limits = DEFAULT_LIMITS) -> list[Message]:
    """Feed chunks, react like an honest peer, and stop at the first ProtocolError."""
    total = sum(map(len, chunks))
    events: list[Message] = []
    try:
        if conn.role == "sandbox":
            conn.send(Hello(PROTOCOL_VERSION, "deno"))
        for chunk in chunks:
            conn.receive_data(chunk)
            while (msg := conn.next_event()) is not None:
                events.append(msg)
                assert len(events) * (PREFIX_BYTES + 1) <= total  # no event from nothing
                react(conn, msg)
            assert conn.buffered_bytes < PREFIX_BYTES + limits.max_frame_bytes
    except ProtocolError:
        assert conn.broken
    return events


def react(conn: Connection, msg: Message) -> None:
    # Only what an honest peer would do, so any ProtocolError comes from the input.
    if isinstance(msg, Hello):
        conn.send(Call(1, "t", None))
        conn.send(Call(2, "t", None))
    elif isinstance(msg, Syscall):
        conn.send(SyscallResult.success(msg.id, msg.seq, None))
    elif isinstance(msg, Call):
        conn.send(Syscall(msg.id, 0, "x", {}))
    elif isinstance(msg, SyscallResult) and conn.in_flight(msg.id):
        conn.send(Result(msg.id, None))


def test_scripted_streams_are_valid() -> None:
    assert len(drive(Connection("broker"), [sandbox_stream()])) == 6
    assert len(drive(Connection("sandbox"), [broker_stream()])) == 6


@given(st.data(), st.binary(max_size=600), st.sampled_from(["broker", "sandbox"]), limits_st)
def test_random_bytes_give_only_protocol_errors(
    data: st.DataObject, raw: bytes, role: Any, limits: Limits
) -> None:
    drive(Connection(role, limits), data.draw(chunked(raw)), limits)


@given(st.data(), st.sampled_from(["broker", "sandbox"]), limits_st)
def test_mutated_streams_give_only_protocol_errors(
    data: st.DataObject, role: Any, limits: Limits
) -> None:
    stream = sandbox_stream() if role == "broker" else broker_stream()
    raw = data.draw(mutated(stream))
    drive(Connection(role, limits), data.draw(chunked(raw)), limits)


@given(st.data(), st.binary(max_size=600), limits_st)
def test_frame_decoder_on_random_bytes(data: st.DataObject, raw: bytes, limits: Limits) -> None:
    dec = FrameDecoder(limits)
    try:
        for chunk in data.draw(chunked(raw)):
            dec.feed(chunk)
            while (frame := dec.next_frame()) is not None:
                assert type(frame) is dict
                with contextlib.suppress(ProtocolError):
                    parse_message(frame)
            assert dec.buffered_bytes < PREFIX_BYTES + limits.max_frame_bytes
    except ProtocolError:
        pass


@given(st.data(), limits_st)
def test_mutated_frames_on_frame_decoder(data: st.DataObject, limits: Limits) -> None:
    raw = data.draw(mutated(sandbox_stream() + broker_stream()))
    dec = FrameDecoder(limits)
    try:
        for chunk in data.draw(chunked(raw)):
            dec.feed(chunk)
            while dec.next_frame() is not None:
                pass
    except ProtocolError:
        pass


@given(values, limits_st)
def test_encode_and_parse_accept_or_refuse_cleanly(value: Any, limits: Limits) -> None:
    for obj in (value, {"t": "result", "id": 1, "value": value}, {"v": value}):
        try:
            data = encode_frame(obj, limits)
        except ProtocolError:
            continue
        dec = FrameDecoder(limits)
        dec.feed(data)
        assert dec.next_frame() == obj
        with contextlib.suppress(ProtocolError):
            parse_message(obj)


def test_four_gib_frame_fails_before_buffering() -> None:
    conn = Connection("broker")
    try:
        conn.receive_data(b"\xff\xff\xff\xff" + b"x" * 1000)
    except ProtocolError:
        pass
    else:
        raise AssertionError("a 4 GiB frame was accepted")
    assert conn.buffered_bytes == 0


def test_legal_large_frame_in_small_chunks_is_buffered_once() -> None:
    # A frame at the limit arrives in 64 KiB reads; the buffer never exceeds the frame.
    limits = Limits(max_frame_bytes=1 << 20)
    payload = {"t": "result", "id": 1, "value": "x" * ((1 << 20) - 64)}
    data = encode_frame(payload, limits)
    dec = FrameDecoder(limits)
    for i in range(0, len(data), 1 << 16):
        dec.feed(data[i : i + (1 << 16)])
        assert dec.buffered_bytes <= len(data)
    assert dec.next_frame() == payload
