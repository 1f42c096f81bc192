"""Framing: length prefix, strict msgpack bodies, limits, and buffering of partial frames."""

from __future__ import annotations

import enum
from typing import Any

import msgpack
import pytest

from broker.errors import ProtocolError
from broker.protocol import (
    DEFAULT_LIMITS,
    FrameDecoder,
    Limits,
    body_decoder,
    check_encodable,
    decode_body,
    encode_frame,
    pack,
)

CANCEL = {"t": "cancel", "id": 1}


def nested(depth: int) -> Any:
    """A map at depth 1 holding lists down to `depth` containers in all."""
    v: Any = []
    for _ in range(depth - 2):
        v = [v]
    return {"x": v}


def decode_all(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    dec = FrameDecoder(limits)
    dec.feed(data)
    frames = []
    while (frame := dec.next_frame()) is not None:
        frames.append(frame)
    assert dec.buffered_bytes == 0
    return frames


# -- encoding ----------------------------------------------------------------------------


def test_frame_is_big_endian_length_then_msgpack() -> None:
    data = encode_frame(CANCEL)
    body = msgpack.packb(CANCEL)
    assert data == len(body).to_bytes(4, "big") + body


def test_round_trip_of_every_value_kind() -> None:
    obj = {
        "nil": None,
        "bools": [True, False],
        "ints": [0, -1, 2**64 - 1, -(2**63)],
        "floats": [1.5, -0.0, 1e300],
        "str": "日本語 🎉",
        "bin": b"\x00\xff",
        "nested": {"a": [{}, [], {"b": None}]},
    }
    assert decode_all(encode_frame(obj)) == [obj]


@pytest.mark.parametrize(
    "body",
    [[1], None, "x", 1, b"x"],
    ids=["array", "nil", "str", "int", "bin"],
)
def test_body_must_be_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError):
        encode_frame(body)
    with pytest.raises(ProtocolError):
        decode_body(msgpack.packb(body))


class Color(enum.IntEnum):
    RED = 1


class MyDict(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        Color.RED,
        MyDict(),
        bytearray(b"x"),
        object(),
        {1: "int key"},
        {b"k": "bin key"},
        2**64,
        -(2**63) - 1,
        "\ud800",
        {1.5},
    ],
    # Stable ids (no addresses): parallel workers must collect the same tests.
    ids=lambda value: type(value).__name__ if type(value) is object else repr(value),
)
def test_encode_refuses_what_a_strict_decoder_would(value: Any) -> None:
    with pytest.raises(ProtocolError):
        encode_frame({"v": value})


def test_encode_refuses_oversized_frame() -> None:
    limits = Limits(max_frame_bytes=20)
    assert len(encode_frame({"s": "x" * 16}, limits)) == 4 + 20  # map 1 + key 2 + str 17
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame({"s": "x" * 40}, limits)


def test_encode_depth_boundary() -> None:
    limits = Limits(max_depth=5)
    assert decode_all(encode_frame(nested(5), limits), limits) == [nested(5)]
    with pytest.raises(ProtocolError, match="nesting"):
        encode_frame(nested(6), limits)


def test_encode_refuses_very_deep_value_without_recursion_error() -> None:
    v: Any = []
    for _ in range(100_000):
        v = [v]
    with pytest.raises(ProtocolError, match="nesting"):
        encode_frame({"v": v})


@pytest.mark.parametrize(
    ("limits", "value"),
    [
        (Limits(max_str_len=4), "é" * 3),  # 3 characters, 6 UTF-8 bytes
        (Limits(max_str_len=4), {"é" * 3: 1}),  # keys are strs too
        (Limits(max_bin_len=4), b"12345"),
        (Limits(max_array_len=4), [1, 2, 3, 4, 5]),
        (Limits(max_map_len=4), {str(i): i for i in range(5)}),
    ],
    ids=["str", "key", "bin", "array", "map"],
)
def test_length_limits_both_ways(limits: Limits, value: Any) -> None:
    with pytest.raises(ProtocolError):
        encode_frame({"v": value}, limits)
    with pytest.raises(ProtocolError):
        check_encodable(value, limits)
    data = encode_frame({"v": value})  # default limits let it through
    with pytest.raises(ProtocolError):
        decode_all(data, limits)


def test_length_limits_at_the_boundary_pass() -> None:
    limits = Limits(max_str_len=4, max_bin_len=4, max_array_len=4, max_map_len=4)
    obj = {"s": "éé", "b": b"1234", "a": [1, 2, 3, 4]}
    assert decode_all(encode_frame(obj, limits), limits) == [obj]


def test_check_encodable_accepts_scalars_and_refuses_others() -> None:
    check_encodable(None)
    check_encodable("x")
    with pytest.raises(ProtocolError):
        check_encodable((1,))


# -- decoding ----------------------------------------------------------------------------


def test_decoder_buffers_partial_frames_byte_by_byte() -> None:
    frames = [CANCEL, {"t": "log", "id": 2, "level": "info", "text": "ü" * 300}, {}]
    data = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        while (frame := dec.next_frame()) is not None:
            got.append(frame)
    assert got == frames
    assert dec.buffered_bytes == 0


def test_decoder_returns_none_until_complete() -> None:
    data = encode_frame(CANCEL)
    dec = FrameDecoder()
    assert dec.next_frame() is None
    dec.feed(data[:3])
    assert dec.next_frame() is None
    dec.feed(data[3:-1])
    assert dec.next_frame() is None
    assert dec.buffered_bytes == len(data) - 1
    dec.feed(data[-1:])
    assert dec.next_frame() == CANCEL
    assert dec.next_frame() is None


def test_several_frames_in_one_feed() -> None:
    data = encode_frame(CANCEL) * 5
    assert decode_all(data) == [CANCEL] * 5


def test_oversized_declared_length_fails_on_the_prefix_alone() -> None:
    dec = FrameDecoder()
    dec.feed(b"\xff\xff")
    with pytest.raises(ProtocolError, match="declared frame length"):
        dec.feed(b"\xff\xff")  # 4 GiB - 1 declared: refused before any body arrives
    assert dec.buffered_bytes == 0


def test_declared_length_just_over_the_limit() -> None:
    limits = Limits(max_frame_bytes=100)
    dec = FrameDecoder(limits)
    dec.feed((100).to_bytes(4, "big"))  # exactly the limit is fine
    dec = FrameDecoder(limits)
    with pytest.raises(ProtocolError):
        dec.feed((101).to_bytes(4, "big"))


def test_decoder_stays_broken() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00\x00\x01\xc1" + encode_frame(CANCEL))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    with pytest.raises(ProtocolError, match="broken"):
        dec.next_frame()
    with pytest.raises(ProtocolError, match="broken"):
        dec.feed(encode_frame(CANCEL))


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("empty", b""),
        ("reserved 0xc1", b"\xc1"),
        ("trailing bytes", msgpack.packb(CANCEL) + b"\xc0"),
        ("truncated", msgpack.packb(CANCEL)[:-1]),
        ("bad utf-8", b"\x81\xa1t\xa2\xff\xfe"),
        ("int key", b"\x81\x01\x01"),
        ("bin key", b"\x81\xc4\x01k\x01"),
        ("array key", b"\x81\x90\x01"),
        ("map key", b"\x81\x80\x01"),
        ("duplicate key", b"\x82\xa1a\x01\xa1a\x02"),
        ("fixext", b"\x81\xa1a\xd4\x05\x00"),
        ("ext8 len 0", b"\x81\xa1a\xc7\x00\x05"),
        ("timestamp len 0", b"\x81\xa1a\xc7\x00\xff"),
        ("timestamp", b"\x81\xa1a\xd6\xff\x00\x00\x00\x01"),
        ("huge array header", b"\x81\xa1a\xdd\xff\xff\xff\xff"),
        ("huge str header", b"\x81\xa1a\xdb\xff\xff\xff\xff"),
        ("huge map header", b"\x81\xa1a\xdf\xff\xff\xff\xff"),
        ("deeper than msgpack's stack", b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0"),
        ("deeper than max_depth", b"\x81\xa1a" + b"\x91" * 40 + b"\xc0"),
    ],
)
def test_bad_bodies_are_protocol_errors(name: str, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_body(body)
    dec = FrameDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(len(body).to_bytes(4, "big") + body)
        dec.next_frame()


def test_one_body_decoder_refuses_each_bad_body_and_decodes_the_next() -> None:
    """A WASM sandbox keeps one decoder for every result and syscall request: a body it
    refused (a duplicate key, trailing bytes, too deep, too long) leaves nothing behind."""
    decode = body_decoder(Limits(max_frame_bytes=64, max_depth=5))
    for bad in (b"\x82\xa1a\x01\xa1a\x02", msgpack.packb(CANCEL) + b"\xc0",
                msgpack.packb(nested(6)), msgpack.packb({"s": "x" * 80}), b"\xc1"):
        with pytest.raises(ProtocolError):
            decode(bad)
        assert decode(msgpack.packb(CANCEL)) == CANCEL
    assert decode(msgpack.packb(nested(5))) == nested(5)


def test_pack_is_packb_with_bin_types_even_after_a_failed_value() -> None:
    """`pack` reuses one Packer per thread: what it makes is `packb`'s bytes exactly, after a
    value that could not be packed (half of it written) too, and in another thread at once."""
    import threading

    values: list[Any] = [{"n": 0}, {"b": b"\x00\xff", "s": "é", "l": [1.5, None, True]}, None,
                         [2**64 - 1, -(2**63)], {"x": "y" * 70_000}]
    for bad in ({"a": [1, object()]}, {"a": "\udc00"}, [1, 2**70]):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            pack(bad)
        for value in values:
            assert pack(value) == msgpack.packb(value, use_bin_type=True)
    seen: list[bool] = []

    def other() -> None:
        seen.extend(pack(value) == msgpack.packb(value, use_bin_type=True)
                    for _ in range(200) for value in values)

    thread = threading.Thread(target=other)
    thread.start()
    for _ in range(200):
        for value in values:
            assert pack(value) == msgpack.packb(value, use_bin_type=True)
    thread.join()
    assert seen and all(seen)


def test_pack_keeps_no_big_buffer_after_a_big_value() -> None:
    """A Packer's buffer stays as large as the largest value it packed: a thread does not
    keep the one that packed a big value (WASM worker threads pack responses of up to 4 MiB)."""
    from broker.protocol import frames

    pack({"n": 0})
    small = frames._local.packer
    assert pack({"n": 1}) == msgpack.packb({"n": 1}) and frames._local.packer is small
    big = {"x": b"y" * (1 << 20)}
    assert pack(big) == msgpack.packb(big, use_bin_type=True)
    assert getattr(frames._local, "packer", None) is None
    assert pack({"n": 2}) == msgpack.packb({"n": 2})


def test_depth_boundary_when_decoding() -> None:
    limits = Limits(max_depth=5)
    assert decode_body(msgpack.packb(nested(5)), limits) == nested(5)
    with pytest.raises(ProtocolError, match="nesting"):
        decode_body(msgpack.packb(nested(6)), limits)


def test_decode_body_refuses_oversized_body() -> None:
    with pytest.raises(ProtocolError):
        decode_body(msgpack.packb({"s": "x" * 50}), Limits(max_frame_bytes=10))


# -- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"max_depth": 0}, {"max_array_len": -1}, {"max_str_len": 1.5}, {"max_frame_bytes": 2**32}],
)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_depth = 3  # type: ignore[misc]
