"""The shared vectors in tests/vectors/frames.json, run the way README.md tells every
implementation to run them. The JSON reader here is written from the README, independently of
the generator's writer, as the TypeScript one will be."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ERRORS, ProtocolError
from broker.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    SANDBOX_KINDS,
    FrameDecoder,
    Limits,
    encode_frame,
    parse_message,
)
from broker.protocol.messages import BROKER_TO_SANDBOX, SANDBOX_TO_BROKER
from tests.vectors import generate

VECTOR_FILE = Path(__file__).parents[2] / "vectors" / "frames.json"
DOC = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
VECTORS = DOC["vectors"]
VALID = [v for v in VECTORS if "message" in v]
INVALID = [v for v in VECTORS if "error" in v]


def from_json(v: Any) -> Any:
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and next(iter(v)).startswith("$"):
            ((tag, x),) = v.items()
            if tag == "$bin":
                return bytes.fromhex(x)
            if tag == "$int":
                return int(x)
            if tag == "$float":
                return float(x)
            if tag == "$map":
                return {k: from_json(y) for k, y in x.items()}
            raise ValueError(f"unknown tag {tag}")
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, float):
        raise ValueError("a float must be tagged")
    return v


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1, 1.0 and True apart, keeps -0.0's sign and lets NaN equal NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def limits_of(vector: dict[str, Any]) -> Limits:
    return Limits(**{**DOC["limits"], **vector.get("limits", {})})


def decode_one(data: bytes, limits: Limits, chunk: int | None = None) -> dict[str, Any]:
    dec = FrameDecoder(limits)
    step = chunk or max(len(data), 1)
    frames = []
    for i in range(0, len(data), step):
        dec.feed(data[i : i + step])
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    if len(frames) != 1 or dec.buffered_bytes:
        raise ProtocolError("input ends inside a frame, or holds more than one")  # at EOF
    return frames[0]


def test_committed_file_is_what_the_generator_writes() -> None:
    assert VECTOR_FILE.read_text(encoding="utf-8") == generate.render(), (
        "stale: run python -m tests.vectors.generate"
    )


def test_file_metadata_matches_the_implementation() -> None:
    assert DOC["protocol_version"] == PROTOCOL_VERSION
    assert DOC["limits"] == asdict(DEFAULT_LIMITS)
    assert DOC["error_codes"] == sorted(ERRORS)
    assert DOC["sandbox_kinds"] == sorted(SANDBOX_KINDS)


def test_vectors_are_well_formed() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    for v in VECTORS:
        assert ("message" in v) != ("error" in v), v["name"]
        assert bytes.fromhex(v["hex"]).hex() == v["hex"], v["name"]
        allowed = {"name", "note", "limits", "hex", "message", "canonical", "error"}
        assert set(v) <= allowed, v["name"]
        if "error" in v:
            assert v["error"] == "PROTOCOL_ERROR" and "canonical" not in v
        else:
            assert type(v["canonical"]) is bool


def test_every_message_type_has_a_valid_vector() -> None:
    types = {parse_message(from_json(v["message"])).T for v in VALID}
    assert types == {cls.T for cls in SANDBOX_TO_BROKER | BROKER_TO_SANDBOX}


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["name"])
def test_valid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    limits = limits_of(vector)
    expected = from_json(vector["message"])
    for chunk in (None, 1, 7):
        frame = decode_one(data, limits, chunk)
        assert same(frame, expected)
        assert list(frame) == list(expected)  # the JSON keeps the wire's key order
        assert same(parse_message(frame).to_wire(), expected)
    if vector["canonical"]:
        assert encode_frame(expected, limits) == data
    else:
        assert encode_frame(expected, limits) != data


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_invalid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    for chunk in (None, 1, 7):
        with pytest.raises(ProtocolError):
            parse_message(decode_one(data, limits_of(vector), chunk))


def test_json_reader_rules() -> None:
    assert from_json({"$map": {"$bin": "00"}}) == {"$bin": "00"}
    assert from_json({"$int": "18446744073709551615"}) == 2**64 - 1
    assert math.isnan(from_json({"$float": "NaN"}))
    assert from_json({"$float": "-Infinity"}) == -math.inf
    assert from_json({"a": 1, "$b": 2}) == {"a": 1, "$b": 2}  # two keys: not a tag
    with pytest.raises(ValueError):
        from_json({"$nope": 1})
