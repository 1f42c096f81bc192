"""A tool result as a model sees it (`chat.to_json_text`): cut to its limit, saying how long it
was, and never encoded whole first (an 8 MiB read took the broker's thread ~40 ms to encode
for 16,000 characters, at every step of a process reading it; seen in bench/soak_bench.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.planner import chat
from broker.planner.chat import MAX_RESULT_CHARS, to_json_text


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every JSON text the planner encodes."""
    sizes: list[int] = []
    dumps = json.dumps

    def spy(value: Any, **options: Any) -> str:
        out = dumps(value, **options)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(chat.json, "dumps", spy)
    return sizes


@pytest.mark.parametrize(("value", "total"), [
    ("a" * (8 << 20), (8 << 20) + 2),
    ({"body": b"\0" * (1 << 20)}, None),
    (list(range(1 << 20)), None),
    ({f"k{i}": i for i in range(1 << 18)}, None),
    (["x" * 20_000] * 1000, None),
])
def test_a_big_result_is_cut_without_encoding_it_whole(value: Any, total: int | None,
                                                        encoded: list[int]) -> None:
    text = to_json_text(value)
    assert len(text) <= MAX_RESULT_CHARS and "... [cut: " in text
    said = int(text.rsplit("[cut: at least ", 1)[1].split()[0])
    assert said == total if total is not None else said > MAX_RESULT_CHARS
    assert max(encoded) < 8 * MAX_RESULT_CHARS  # what is encoded is bounded by the limit


def test_small_results_are_whole_json(encoded: list[int]) -> None:
    value = {"path": "/a", "bytes": b"\x00\x01", "items": [1, "two", None], "é": "ü"}
    text = to_json_text(value)
    assert json.loads(text) == {**value, "bytes": {"$bytes": "AAE="}}
    exactly = "x" * (MAX_RESULT_CHARS - 2)
    assert json.loads(to_json_text(exactly)) == exactly
