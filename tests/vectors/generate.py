"""Generate tests/vectors/frames.json, the shared byte-level test vectors (see README.md).

Run from the repository root: `python -m tests.vectors.generate`. The output is
deterministic; tests/broker/protocol/test_vectors.py fails if the committed file is stale.

Valid vectors state their expected message independently of the decoder (either the value
that was encoded, or, for hand-made bytes, a literal), and every vector is checked against
the Python implementation here, so a generated file never disagrees with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import msgpack

from broker.errors import ERRORS, ProtocolError
from broker.protocol import (
    DEFAULT_LIMITS,
    ID_LIMIT,
    PROTOCOL_VERSION,
    SANDBOX_KINDS,
    FrameDecoder,
    Limits,
    encode_frame,
    parse_message,
)

OUT = Path(__file__).with_name("frames.json")
JS_SAFE = (1 << 53) - 1  # beyond this a JSON number is not exact in every language
TAGS = ("$bin", "$int", "$float", "$map")


# -- JSON form of wire values ------------------------------------------------------------


def float_text(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)  # shortest text that reads back as the same float64


def to_json(v: Any) -> Any:
    if v is None or type(v) in (bool, str):
        return v
    if type(v) is int:
        return v if -JS_SAFE <= v <= JS_SAFE else {"$int": str(v)}
    if type(v) is float:
        return {"$float": float_text(v)}
    if type(v) is bytes:
        return {"$bin": v.hex()}
    if type(v) is list:
        return [to_json(x) for x in v]
    if type(v) is dict:
        d = {k: to_json(x) for k, x in v.items()}
        if len(d) == 1 and next(iter(d)).startswith("$"):
            return {"$map": d}  # a literal map that would read as a tag
        return d
    raise TypeError(type(v))


# -- raw msgpack building blocks, for bytes no well-behaved encoder would write ------------


def mp(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def kv(key: str, value: Any) -> tuple[bytes, bytes]:
    return mp(key), mp(value)


def prefix(n: int) -> bytes:
    return n.to_bytes(4, "big")


def framed(body: bytes) -> bytes:
    return prefix(len(body)) + body


def call_with_raw_args(raw: bytes) -> bytes:
    return raw_map(kv("t", "call"), kv("id", 1), kv("tool", "x"), (mp("args"), raw))


def nested_lists(depth: int) -> list[Any]:
    v: list[Any] = []
    for _ in range(depth - 1):
        v = [v]
    return v


# -- the vectors -------------------------------------------------------------------------

VECTORS: list[dict[str, Any]] = []


def _limits(overrides: dict[str, int] | None) -> Limits:
    return Limits(**{**asdict(DEFAULT_LIMITS), **(overrides or {})})


def _decode(data: bytes, limits: Limits) -> Any:
    """What a conforming decoder does: one frame, then end of input."""
    dec = FrameDecoder(limits)
    dec.feed(data)
    frame = dec.next_frame()
    if frame is None or dec.buffered_bytes:
        raise ProtocolError("input ends inside a frame, or holds more than one")
    return parse_message(frame)


def valid(name: str, msg: dict[str, Any], note: str = "", **limits: int) -> None:
    """A message encoded by the reference encoder: canonical by construction."""
    data = encode_frame(msg, _limits(limits))
    _add_valid(name, data, msg, note, limits, canonical=True)


def valid_raw(name: str, data: bytes, msg: dict[str, Any], note: str, **limits: int) -> None:
    """Hand-made bytes (a non-minimal encoding, say) that must decode to `msg`."""
    canonical = mp(msg) == data[4:]
    _add_valid(name, data, msg, note, limits, canonical=canonical)


def _add_valid(
    name: str,
    data: bytes,
    msg: dict[str, Any],
    note: str,
    limits: dict[str, int],
    *,
    canonical: bool,
) -> None:
    got = _decode(data, _limits(limits)).to_wire()
    assert json.dumps(to_json(got), sort_keys=True) == json.dumps(to_json(msg), sort_keys=True)
    entry: dict[str, Any] = {"name": name}
    if note:
        entry["note"] = note
    if limits:
        entry["limits"] = limits
    entry["hex"] = data.hex()
    entry["message"] = to_json(msg)
    entry["canonical"] = canonical
    VECTORS.append(entry)


def invalid(name: str, data: bytes, note: str, **limits: int) -> None:
    try:
        _decode(data, _limits(limits))
    except ProtocolError:
        pass
    else:
        raise AssertionError(f"vector {name!r} decodes, but should not")
    entry: dict[str, Any] = {"name": name, "note": note}
    if limits:
        entry["limits"] = limits
    entry["hex"] = data.hex()
    entry["error"] = "PROTOCOL_ERROR"
    VECTORS.append(entry)


def invalid_body(name: str, body: bytes, note: str, **limits: int) -> None:
    invalid(name, framed(body), note, **limits)


def invalid_msg(name: str, obj: Any, note: str, **limits: int) -> None:
    """A well-formed msgpack body (any value msgpack-python packs) that is not a message."""
    invalid_body(name, mp(obj), note, **limits)


ALL_SCALARS = {
    "nil": None,
    "true": True,
    "false": False,
    "zero": 0,
    "neg": -1,
    "neg_fix_min": -32,
    "neg8": -33,
    "neg64_min": -(1 << 63),
    "uint64_max": (1 << 64) - 1,
    "js_safe_max": JS_SAFE,
    "js_unsafe": 1 << 53,
    "float": 1.5,
    "neg_float": -2.25,
    "float_tiny": 5e-324,
    "float_huge": 1.7976931348623157e308,
    "float_integral": 3.0,
    "empty_str": "",
    "unicode": "héllo wörld — 日本語 🎉",
    "empty_map": {},
    "empty_array": [],
}


def build_valid() -> None:
    valid("hello deno", {"t": "hello", "v": PROTOCOL_VERSION, "kind": "deno"})
    valid("hello wasm", {"t": "hello", "v": PROTOCOL_VERSION, "kind": "wasm"})
    valid("hello pyodide", {"t": "hello", "v": PROTOCOL_VERSION, "kind": "pyodide"})
    valid(
        "hello, other version",
        {"t": "hello", "v": 7, "kind": "deno"},
        "a message, so it parses; the connection refuses any version but the current one",
    )
    valid(
        "load tool",
        {
            "t": "load",
            "tool": "word_count",
            "lang": "ts",
            "hash": "sha256:" + "ab" * 32,
            "source": 'export default async function (args, libos) {\n  return "✓";\n}\n',
        },
    )
    valid(
        "call with every kind of value in args",
        {"t": "call", "id": 1, "tool": "echo", "args": dict(ALL_SCALARS)},
        "ints beyond ±(2**53-1) are {'$int': decimal}; floats are {'$float': text}",
    )
    valid(
        "call with nested args",
        {
            "t": "call",
            "id": 2,
            "tool": "plan",
            "args": {"steps": [{"do": "read", "paths": ["/a", "/b"]}, {"do": [[], {}, [None]]}]},
        },
    )
    valid("call with nil args", {"t": "call", "id": 3, "tool": "ping", "args": None})
    valid("call with array args", {"t": "call", "id": 4, "tool": "sum", "args": [1, -2, 3.5]})
    valid("call id 0", {"t": "call", "id": 0, "tool": "x", "args": {}})
    valid("call id 2**53-1", {"t": "call", "id": JS_SAFE, "tool": "x", "args": {}})
    valid(
        "call with __proto__ key",
        {"t": "call", "id": 5, "tool": "x", "args": {"__proto__": {"admin": True}}},
        "an ordinary key: a JavaScript decoder must not treat it as a prototype",
    )
    valid(
        "call with a literal $-key map",
        {"t": "call", "id": 6, "tool": "x", "args": {"$bin": "00"}},
        "JSON escaping: {'$map': {...}} wraps a literal one-key map whose key starts with $",
    )
    valid(
        "at a lowered max_items",
        {"t": "result", "id": 1, "value": [{}, {}, []]},
        "11: the message map 1 + 3, the array 1 + 3, each empty container 1",
        max_items=11,
    )
    valid(
        "call args at max depth",
        {"t": "call", "id": 7, "tool": "x", "args": nested_lists(DEFAULT_LIMITS.max_depth - 1)},
        "the top-level map is depth 1, so args may nest max_depth - 1 containers",
    )
    valid("check tool", {"t": "check", "id": 8, "tool": "word_count"},
          "import a loaded tool and find its run without running it; a result or error ends it")
    valid(
        "syscall",
        {
            "t": "syscall",
            "id": 1,
            "seq": 0,
            "name": "fs.read",
            "args": {"path": "/work/notes.md", "offset": 0, "length": 4096},
        },
    )
    valid(
        "syscall with bin arg",
        {"t": "syscall", "id": 1, "seq": 1, "name": "obj.put", "args": {"data": b"\x00\xff\x10"}},
        "bin is {'$bin': lowercase hex}",
    )
    valid(
        "syscall with empty args",
        {"t": "syscall", "id": 9, "seq": 12, "name": "clock.now", "args": {}},
    )
    valid(
        "sysret ok",
        {
            "t": "sysret",
            "id": 1,
            "seq": 0,
            "ok": True,
            "value": {"data": "# notes\n", "eof": True, "size": 8},
        },
    )
    valid("sysret ok nil", {"t": "sysret", "id": 1, "seq": 1, "ok": True, "value": None})
    valid(
        "sysret ok bin",
        {"t": "sysret", "id": 1, "seq": 2, "ok": True, "value": b"\x89PNG\r\n\x1a\n"},
    )
    for code in sorted(ERRORS):
        valid(
            f"sysret error {code}",
            {"t": "sysret", "id": 1, "seq": 3, "ok": False, "code": code, "message": "no"},
        )
    valid(
        "result",
        {"t": "result", "id": 1, "value": {"count": 42, "words": ["a", "b"]}},
    )
    valid("result unicode", {"t": "result", "id": 1, "value": "Zoë 🧪 ∑ 中文 \u0301"})
    valid(
        "result special floats",
        {
            "t": "result",
            "id": 1,
            "value": [float("inf"), float("-inf"), -0.0, 0.1, float("nan")],
        },
        "$float text is NaN, Infinity, -Infinity or a decimal; NaN equals NaN here",
    )
    valid(
        "result integer boundaries",
        {
            "t": "result",
            "id": 1,
            "value": [
                127,
                128,
                255,
                256,
                65535,
                65536,
                (1 << 32) - 1,
                1 << 32,
                (1 << 63) - 1,
                -33,
                -128,
                -129,
                -32768,
                -32769,
                -(1 << 31),
                -(1 << 31) - 1,
            ],
        },
    )
    valid(
        "result str16, array16, map16",
        {
            "t": "result",
            "id": 1,
            "value": {
                "s": "x" * 300,
                "a": list(range(20)),
                "m": {f"k{i:02}": i for i in range(17)},
            },
        },
    )
    for code in sorted(ERRORS):
        valid(f"error {code}", {"t": "error", "id": 1, "code": code, "message": "it failed"})
    valid("log", {"t": "log", "id": 1, "level": "info", "text": "reading 2 files…"})
    valid("cancel", {"t": "cancel", "id": 1})
    valid("warm up", {"t": "warm"},
          "a spare nobody waits for may warm its own paths; no fields, it answers nothing")
    valid(
        "frame at max_frame_bytes",
        {"t": "cancel", "id": 1},
        "the body is exactly 14 bytes",
        max_frame_bytes=14,
    )
    valid(
        "str at max_str_len, counted in UTF-8 bytes",
        {"t": "log", "id": 1, "level": "info", "text": "aéé"},
        "3 characters, 5 bytes",
        max_str_len=5,
    )

    # Encodings a conforming decoder accepts though a minimal encoder would not write them.
    valid_raw(
        "keys in another order",
        framed(raw_map(kv("id", 1), kv("t", "cancel"))),
        {"id": 1, "t": "cancel"},
        "map order carries no meaning",
    )
    valid_raw(
        "id as uint32",
        framed(raw_map(kv("t", "cancel"), (mp("id"), b"\xce\x00\x00\x00\x05"))),
        {"t": "cancel", "id": 5},
        "ints need not use their smallest encoding",
    )
    valid_raw(
        "id as int8",
        framed(raw_map(kv("t", "cancel"), (mp("id"), b"\xd0\x05"))),
        {"t": "cancel", "id": 5},
        "a non-negative value in a signed format is the same int",
    )
    valid_raw(
        "str8 for a short string",
        framed(raw_map((mp("t"), b"\xd9\x06cancel"), kv("id", 1))),
        {"t": "cancel", "id": 1},
        "strs need not use their smallest encoding",
    )
    valid_raw(
        "float32 value",
        framed(raw_map(kv("t", "result"), kv("id", 1), (mp("value"), b"\xca\x3f\xc0\x00\x00"))),
        {"t": "result", "id": 1, "value": 1.5},
        "float32 decodes to the same number as a float",
    )


def build_invalid() -> None:
    cancel = mp({"t": "cancel", "id": 1})
    # Framing.
    invalid("truncated length prefix", b"\x00\x00", "input ends inside the 4-byte prefix")
    invalid("truncated body", prefix(len(cancel)) + cancel[:-3], "input ends inside the body")
    invalid("zero-length body", prefix(0), "an empty body is not a msgpack value")
    invalid(
        "declared length 4 GiB - 1",
        prefix(0xFFFF_FFFF),
        "refused from the prefix alone, before any body is buffered",
    )
    invalid(
        "declared length max_frame_bytes + 1",
        prefix(DEFAULT_LIMITS.max_frame_bytes + 1) + cancel,
        "refused from the prefix alone",
    )
    invalid("body above max_frame_bytes", framed(cancel), "14-byte body", max_frame_bytes=13)
    invalid_body("trailing bytes in body", cancel + b"\xc0", "two msgpack values in one body")
    # Bad msgpack.
    invalid_body("reserved byte 0xc1", b"\xc1", "never used in msgpack")
    invalid_body("truncated map", b"\x82" + mp("t") + mp("cancel"), "map of 2 holds 1 entry")
    invalid_body(
        "array length beyond the body",
        raw_map(kv("t", "result"), kv("id", 1), (mp("value"), b"\xdd\x00\x01\x00\x00")),
        "declares 65536 items and holds none",
    )
    invalid_body("invalid UTF-8 in str", raw_map((mp("t"), b"\xa2\xff\xfe"), kv("id", 1)), "")
    invalid_body(
        "overlong UTF-8",
        raw_map(kv("t", "log"), kv("id", 1), kv("level", "info"), (mp("text"), b"\xa2\xc0\x80")),
        "C0 80 is an overlong NUL",
    )
    invalid_body(
        "UTF-8 encoded surrogate",
        raw_map(
            kv("t", "log"), kv("id", 1), kv("level", "info"), (mp("text"), b"\xa3\xed\xa0\x80")
        ),
        "ED A0 80 encodes U+D800, which UTF-8 forbids",
    )
    invalid_body("invalid UTF-8 in key", raw_map(kv("t", "cancel"), (b"\xa2\xff\xfe", mp(1))), "")
    # Body shape.
    invalid_msg("body is an array", ["cancel", 1], "every body is a map")
    invalid_msg("body is nil", None, "every body is a map")
    invalid_msg("body is a str", "cancel", "every body is a map")
    invalid_msg("int map key", {"t": "cancel", "id": 1, 2: 3}, "map keys must be str")
    invalid_msg(
        "nested int map key",
        {"t": "call", "id": 1, "tool": "x", "args": {1: "one"}},
        "map keys must be str, at any depth",
    )
    invalid_body(
        "bin map key",
        raw_map(kv("t", "call"), kv("id", 1), kv("tool", "x"), (mp("args"), raw_map(kv(b"k", 1)))),
        "map keys must be str, not bin",
    )
    invalid_body("nil map key", raw_map(kv("t", "cancel"), kv("id", 1), (b"\xc0", b"\x01")), "")
    invalid_body(
        "array map key",
        raw_map(kv("t", "cancel"), kv("id", 1), (b"\x90", b"\x01")),
        "a key that is not even hashable in some languages",
    )
    invalid_body(
        "duplicate key",
        raw_map(kv("t", "cancel"), kv("id", 1), kv("id", 2)),
        "decoders disagree on which duplicate wins, so none may",
    )
    invalid_body(
        "duplicate nested key",
        raw_map(
            kv("t", "call"),
            kv("id", 1),
            kv("tool", "x"),
            (mp("args"), raw_map(kv("a", 1), kv("a", 1))),
        ),
        "even with equal values",
    )
    # Ext types.
    invalid_body("ext fixext1", call_with_raw_args(b"\xd4\x05\x00"), "ext types are refused")
    invalid_body("ext8 of length 0", call_with_raw_args(b"\xc7\x00\x05"), "ext types are refused")
    invalid_body(
        "timestamp ext",
        call_with_raw_args(b"\xd6\xff\x00\x00\x00\x01"),
        "msgpack's timestamp is an ext type (-1) too",
    )
    # Message shape.
    invalid_msg("unknown t", {"t": "exec", "id": 1}, "")
    invalid_msg("warm with a field", {"t": "warm", "id": 1}, "warm has no fields")
    invalid_msg("t is not a str", {"t": 1, "id": 1}, "")
    invalid_msg("no t", {"id": 1}, "")
    invalid_msg("empty map", {}, "")
    invalid_msg("missing field", {"t": "call", "id": 1, "tool": "x"}, "args is missing")
    invalid_msg("extra field", {"t": "cancel", "id": 1, "why": "bored"}, "unknown keys refused")
    invalid_msg("id is a str", {"t": "cancel", "id": "1"}, "")
    invalid_msg("id is negative", {"t": "cancel", "id": -1}, "")
    invalid_msg("id is a bool", {"t": "cancel", "id": True}, "")
    invalid_msg("id is a float", {"t": "cancel", "id": 1.0}, "even an integral one")
    invalid_msg("id is 2**53", {"t": "cancel", "id": ID_LIMIT}, "ids are below 2**53")
    invalid_msg(
        "seq is negative",
        {"t": "syscall", "id": 1, "seq": -1, "name": "fs.read", "args": {}},
        "",
    )
    invalid_msg(
        "syscall name is not a str",
        {"t": "syscall", "id": 1, "seq": 0, "name": 5, "args": {}},
        "",
    )
    invalid_msg(
        "syscall args is an array",
        {"t": "syscall", "id": 1, "seq": 0, "name": "fs.read", "args": ["/a"]},
        "syscall args must be a map",
    )
    invalid_msg("hello v is a str", {"t": "hello", "v": "1", "kind": "deno"}, "")
    invalid_msg("hello kind unknown", {"t": "hello", "v": 1, "kind": "python"}, "")
    invalid_msg("sysret without ok", {"t": "sysret", "id": 1, "seq": 0, "value": 1}, "")
    invalid_msg("sysret ok is 1", {"t": "sysret", "id": 1, "seq": 0, "ok": 1, "value": 1}, "")
    invalid_msg(
        "sysret ok with code",
        {"t": "sysret", "id": 1, "seq": 0, "ok": True, "value": 1, "code": "NOT_FOUND"},
        "an ok sysret has exactly id, seq, ok, value",
    )
    invalid_msg(
        "sysret error with value",
        {
            "t": "sysret",
            "id": 1,
            "seq": 0,
            "ok": False,
            "code": "NOT_FOUND",
            "message": "",
            "value": None,
        },
        "a failed sysret has exactly id, seq, ok, code, message",
    )
    invalid_msg(
        "sysret error without message",
        {"t": "sysret", "id": 1, "seq": 0, "ok": False, "code": "NOT_FOUND"},
        "",
    )
    invalid_msg(
        "sysret unknown error code",
        {"t": "sysret", "id": 1, "seq": 0, "ok": False, "code": "OOPS", "message": ""},
        "codes are the typed error set",
    )
    invalid_msg(
        "error unknown code",
        {"t": "error", "id": 1, "code": "INTERNAL", "message": "boom"},
        "codes are the typed error set",
    )
    invalid_msg(
        "error code in lower case",
        {"t": "error", "id": 1, "code": "not_found", "message": "gone"},
        "codes are case-sensitive",
    )
    invalid_msg("log text is nil", {"t": "log", "id": 1, "level": "info", "text": None}, "")
    invalid_msg("log of an unknown level", {"t": "log", "id": 1, "level": "INFO", "text": "x"},
                "a level is one of debug, info, warn, error")
    # Limits.
    depth = DEFAULT_LIMITS.max_depth
    invalid_msg(
        "args one level too deep",
        {"t": "call", "id": 1, "tool": "x", "args": nested_lists(depth)},
        f"depth {depth + 1}: the top-level map is depth 1",
    )
    invalid_body(
        "deep nesting beyond any decoder's stack",
        call_with_raw_args(b"\x91" * 1999 + b"\x90"),
        "2000 nested arrays: must be a PROTOCOL_ERROR, not a crash",
    )
    invalid_msg(
        "str over max_str_len, counted in UTF-8 bytes",
        {"t": "log", "id": 1, "level": "info", "text": "ééé"},
        "3 characters, 6 bytes",
        max_str_len=5,
    )
    invalid_msg(
        "key over max_str_len",
        {"t": "call", "id": 1, "tool": "x", "args": {"longkey": 1}},
        "keys are strs too",
        max_str_len=6,
    )
    invalid_msg(
        "bin over max_bin_len",
        {"t": "result", "id": 1, "value": b"12345"},
        "",
        max_bin_len=4,
    )
    invalid_msg(
        "array over max_array_len",
        {"t": "result", "id": 1, "value": [1, 2, 3, 4, 5]},
        "",
        max_array_len=4,
    )
    invalid_msg(
        "map over max_map_len",
        {"t": "result", "id": 1, "value": {}},
        "the message map itself has 3 entries",
        max_map_len=2,
    )
    invalid_msg(
        "over a lowered max_depth",
        {"t": "result", "id": 1, "value": [[1]]},
        "depth 3",
        max_depth=2,
    )
    invalid_msg(
        "over a lowered max_items",
        {"t": "result", "id": 1, "value": [{}, {}, []]},
        "11: the message map 1 + 3, the array 1 + 3, each empty container 1",
        max_items=10,
    )


def build() -> dict[str, Any]:
    VECTORS.clear()
    build_valid()
    build_invalid()
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    return {
        "format": "libos frame vectors; see README.md",
        "protocol_version": PROTOCOL_VERSION,
        "limits": {f.name: getattr(DEFAULT_LIMITS, f.name) for f in fields(Limits)},
        "error_codes": sorted(ERRORS),
        "sandbox_kinds": sorted(SANDBOX_KINDS),
        "vectors": list(VECTORS),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {len(VECTORS)} vectors to {OUT}")


if __name__ == "__main__":
    main()
