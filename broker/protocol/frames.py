"""Frames: a u32 big-endian body length, then one msgpack value, which must be a map.

Sans-IO: bytes in, values out, and the reverse. Decoding is the authority boundary's first
line, so it is strict where msgpack is lenient: map keys must be str and unique, ext types
(including msgpack's timestamp) are refused, nesting is bounded, and every length is capped
before anything is allocated for it. Anything wrong is a `ProtocolError`, never another
exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

from broker.errors import ProtocolError
from broker.protocol.limits import DEFAULT_LIMITS, Limits

PREFIX_BYTES = 4

# Exact types a leaf may have: subclasses, tuples, bytearrays and the like are refused, so
# that what one end encodes is exactly what the other decodes.
_LEAVES = frozenset({type(None), bool, int, float, str, bytes})


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # msgpack keeps the last of duplicate keys; another decoder may keep the first, so a
    # duplicate is refused rather than silently resolved. Key types: see _check_tree.
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ProtocolError("duplicate map key")
    return d


def _refuse_ext(code: int, data: bytes) -> Any:
    # max_ext_len=0 still lets a zero-length ext through to this hook.
    raise ProtocolError(f"ext type {code} is not allowed")


# What is left of the frame being decoded's `max_items`, per thread (a WASM tool's bodies are
# decoded on worker threads): the hooks count each container as msgpack builds it, so a frame
# of too many stops there, before the rest is made.
_items = threading.local()


def _count(n: int) -> None:
    left = _items.left - n
    if left < 0:
        raise ProtocolError(f"more than {_items.limit} containers and values in one frame")
    _items.left = left


def _counted_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    _count(len(pairs) + 1)
    return _unique_keys(pairs)


def _counted_list(items: list[Any]) -> list[Any]:
    _count(len(items) + 1)
    return items


def _unpacker(limits: Limits) -> partial[Any]:
    return partial(
        msgpack.unpackb,
        raw=False,
        use_list=True,
        strict_map_key=True,
        object_pairs_hook=_counted_pairs,
        list_hook=_counted_list,
        ext_hook=_refuse_ext,
        max_str_len=limits.max_str_len,
        max_bin_len=limits.max_bin_len,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_ext_len=0,
    )


_local = threading.local()
# A Packer keeps its buffer at the largest value it has packed; past its initial size (256
# KiB) the thread's Packer is dropped after the value, so a thread keeps at most that.
_KEPT_PACKER_BYTES = 256 << 10


def pack(obj: Any) -> bytes:
    """`msgpack.packb(obj, use_bin_type=True)`, the same bytes, with this thread's Packer:
    `packb` builds a Packer per call, most of its cost for a small value (a warm call packs
    its arguments and its frame). A Packer is not safe to share between threads; one that
    fails leaves its buffer empty for the next value."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    body = packer.pack(obj)
    if len(body) > _KEPT_PACKER_BYTES:
        del _local.packer  # its grown buffer goes with it (a big value pays a new Packer)
    return body


def _check_tree(obj: Any, max_depth: int, max_items: int) -> None:
    """Depth, str keys, leaf types and the count of containers and values. Iterative, so
    depth cannot exhaust the Python stack."""
    todo = [(obj, 1)]
    items = 0
    while todo:
        value, depth = todo.pop()
        if depth > max_depth:
            raise ProtocolError(f"nesting deeper than {max_depth}")
        items += len(value) + 1
        if items > max_items:
            raise ProtocolError(f"more than {max_items} containers and values in one frame")
        if type(value) is dict:
            for k, child in value.items():
                if type(k) is not str:
                    # msgpack's strict_map_key still lets bin keys through
                    raise ProtocolError(f"map key must be str, got {type(k).__name__}")
                tc = type(child)
                if tc is dict or tc is list:
                    todo.append((child, depth + 1))
                elif tc not in _LEAVES:
                    raise ProtocolError(f"{tc.__name__} cannot be sent")
        else:
            for child in value:
                tc = type(child)
                if tc is dict or tc is list:
                    todo.append((child, depth + 1))
                elif tc not in _LEAVES:
                    raise ProtocolError(f"{tc.__name__} cannot be sent")


def _utf8_len_over(s: str, bound: int) -> bool:
    # UTF-8 takes 1 to 4 bytes a character; encode only when the count alone cannot decide.
    n = len(s)
    if n * 4 <= bound:
        return False
    return n > bound or len(s.encode("utf-8", "surrogatepass")) > bound


def _check_lengths(obj: Any, limits: Limits) -> None:
    """Every str, bin, array and map within its limit (types already checked)."""
    todo = [obj]
    while todo:
        value = todo.pop()
        t = type(value)
        if t is str:
            if _utf8_len_over(value, limits.max_str_len):
                raise ProtocolError(f"str longer than {limits.max_str_len} bytes")
        elif t is bytes:
            if len(value) > limits.max_bin_len:
                raise ProtocolError(f"bin longer than {limits.max_bin_len} bytes")
        elif t is dict:
            if len(value) > limits.max_map_len:
                raise ProtocolError(f"map longer than {limits.max_map_len}")
            todo.extend(value)
            todo.extend(value.values())
        elif t is list:
            if len(value) > limits.max_array_len:
                raise ProtocolError(f"array longer than {limits.max_array_len}")
            todo.extend(value)


def check_encodable(obj: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse any value that a decoder with the same limits would refuse (size aside)."""
    if type(obj) is dict or type(obj) is list:
        _check_tree(obj, limits.max_depth, limits.max_items)
    elif type(obj) not in _LEAVES:
        raise ProtocolError(f"{type(obj).__name__} cannot be sent")
    _check_lengths(obj, limits)


def _smallest_length_limit(limits: Limits) -> int:
    # Every element takes at least one byte of body, so a body no longer than this cannot
    # hold a str, bin, array or map over its limit: the length walk can be skipped.
    return min(limits.max_str_len, limits.max_bin_len, limits.max_array_len, limits.max_map_len)


def encode_frame(obj: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Length prefix + msgpack body for a map; ProtocolError if the peer could not accept it."""
    if type(obj) is not dict:
        raise ProtocolError("a frame body must be a map")
    _check_tree(obj, limits.max_depth, limits.max_items)
    try:
        body = pack(obj)
    except Exception as exc:  # ints beyond 64 bits, lone surrogates
        raise ProtocolError(f"cannot encode frame: {exc}") from None
    n = len(body)
    if n > limits.max_frame_bytes:
        raise ProtocolError(f"frame of {n} bytes exceeds {limits.max_frame_bytes}")
    if n > _smallest_length_limit(limits):
        _check_lengths(obj, limits)
    return n.to_bytes(PREFIX_BYTES, "big") + body


def _decode(unpack: partial[Any], body: bytes | bytearray, limits: Limits) -> dict[str, Any]:
    _items.left = _items.limit = limits.max_items
    try:
        obj = unpack(body)
    except ProtocolError:
        raise
    except Exception as exc:  # ValueError, ExtraData, StackError, UnicodeDecodeError, ...
        raise ProtocolError(f"bad msgpack: {type(exc).__name__}: {exc}") from None
    if type(obj) is not dict:
        raise ProtocolError("a frame body must be a map")
    _check_tree(obj, limits.max_depth, limits.max_items)
    return obj


def decode_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Decode one frame body (without its prefix); trailing bytes are a ProtocolError."""
    return body_decoder(limits)(body)


def body_decoder(limits: Limits = DEFAULT_LIMITS) -> Callable[[bytes], dict[str, Any]]:
    """`decode_body` under `limits`, its unpacker built once: building it costs more than
    decoding a small body, which a WASM tool's result and each of its syscalls is."""
    unpack, max_bytes = _unpacker(limits), limits.max_frame_bytes

    def decode(body: bytes) -> dict[str, Any]:
        if len(body) > max_bytes:
            raise ProtocolError(f"frame of {len(body)} bytes exceeds {max_bytes}")
        return _decode(unpack, body, limits)

    return decode


def _still_broken(cause: ProtocolError) -> ProtocolError:
    # A fresh exception each time: re-raising one instance would grow its traceback forever.
    return ProtocolError(f"stream already broken: {cause.message}")


class FrameDecoder:
    """Buffers a byte stream and yields one decoded body per complete frame.

    A declared length above `max_frame_bytes` fails as soon as its 4 prefix bytes arrive, so
    the buffer never holds more than one legal frame plus what the caller fed since it last
    drained `next_frame()`. After any error the decoder stays broken: the stream has lost
    sync and nothing later in it can be trusted.
    """

    __slots__ = ("_broken", "_buf", "_limits", "_unpack")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._unpack = _unpacker(limits)
        self._buf = bytearray()
        self._broken: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame (nonzero at EOF = truncated)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise _still_broken(self._broken)
        self._buf += data
        if len(self._buf) >= PREFIX_BYTES:
            self._body_length()

    def next_frame(self) -> dict[str, Any] | None:
        """The next complete frame's body, or None until more data is fed."""
        if self._broken is not None:
            raise _still_broken(self._broken)
        buf = self._buf
        if len(buf) < PREFIX_BYTES:
            return None
        end = PREFIX_BYTES + self._body_length()
        if len(buf) < end:
            return None
        body = buf[PREFIX_BYTES:end]  # a copy, so the buffer may shrink under it
        del buf[:end]
        try:
            return _decode(self._unpack, body, self._limits)
        except ProtocolError as exc:
            self._broken = exc
            self._buf = bytearray()  # the rest of the stream is unreadable: free it
            raise

    def _body_length(self) -> int:
        n = int.from_bytes(self._buf[:PREFIX_BYTES], "big")
        if n > self._limits.max_frame_bytes:
            self._broken = ProtocolError(
                f"declared frame length {n} exceeds {self._limits.max_frame_bytes}"
            )
            self._buf = bytearray()  # drop what we hold; nothing after this is read
            raise self._broken
        return n
