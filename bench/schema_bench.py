"""What schemas from processes cost (broker/schema/), beside fastjsonschema on its own.

Run with `python -m bench.schema_bench`. Figures: µs for checking a typical tool's arguments
through the cache (canonical JSON, look-up, check) beside fastjsonschema's bare validator and
the kernel's path before broker/schema/ (a key from `repr`, then the bare validator); ms
to compile a typical schema and one at the generated-code bound; ms for RE2 to refuse
`^(a+)+$` on 100 000 a's and a '!', beside Python `re` on only 22 (which doubles with each
one more); ms a check takes to reach its step budget (the longest any check can hold the
broker's thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from typing import Any

import fastjsonschema

from bench.timing import best_us
from broker.schema import validator as schemas

TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/"},
        "mode": {"enum": ["read", "write", "append"]},
        "limit": {"type": "integer", "minimum": 0, "maximum": 1 << 20},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
    },
    "required": ["path"],
    "additionalProperties": False,
}
ARGS = {"path": "/notes/todo.md", "mode": "append", "limit": 4096, "tags": ["a", "b"]}


def _ms(fn: Any, repeat: int = 5) -> float:
    """Best of `repeat` single runs, each with an empty cache, in ms."""
    best = float("inf")
    for _ in range(repeat):
        schemas._cache.clear()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _near_the_code_bound() -> dict[str, Any]:
    width = 1
    while True:
        wide = {"properties": {f"p{i}": {"type": "integer", "minimum": i}
                               for i in range(width * 2)}}
        try:
            schemas.compile_schema(wide)
        except Exception:
            return {"properties": {f"p{i}": {"type": "integer", "minimum": i}
                                   for i in range(width)}}
        width *= 2


def _before(cache: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """The kernel's tool-argument check before broker/schema/, for comparison."""
    cache[hashlib.sha256(repr(sorted(schema.items())).encode()).hexdigest()](value)


def run(number: int = 20_000, repeat: int = 5) -> dict[str, float]:
    bare = fastjsonschema.compile(TOOL_SCHEMA, use_default=False)
    before = {hashlib.sha256(repr(sorted(TOOL_SCHEMA.items())).encode()).hexdigest(): bare}
    figures = {
        "check_cached_us": best_us(lambda: schemas.validate(TOOL_SCHEMA, ARGS, "t"), number,
                                   repeat),
        "check_bare_fastjsonschema_us": best_us(lambda: bare(ARGS), number, repeat),
        "check_before_us": best_us(lambda: _before(before, TOOL_SCHEMA, ARGS), number, repeat),
    }
    figures["compile_typical_ms"] = _ms(lambda: schemas.compile_schema(TOOL_SCHEMA))
    figures["compile_typical_bare_fastjsonschema_ms"] = _ms(
        lambda: fastjsonschema.compile(TOOL_SCHEMA))
    big = _near_the_code_bound()
    figures["compile_near_code_bound_ms"] = _ms(lambda: schemas.compile_schema(big))
    evil = schemas.compile_schema({"pattern": "^(a+)+$"})

    def refuse(text: str) -> None:
        with contextlib.suppress(schemas.InvalidArgument):
            evil.check(text, "t")

    figures["re2_evil_pattern_100k_chars_ms"] = _ms(lambda: refuse("a" * 100_000 + "!"))
    tried = schemas.compile_schema({"type": "array", "items": {
        "type": "string", "anyOf": [{"pattern": f"^x{i}$"} for i in range(100)] + [{}]}})

    def over_budget() -> None:
        with contextlib.suppress(schemas.LimitExceeded):
            tried.check(["a" * 100] * 100_000, "t")

    figures["check_cut_off_at_step_budget_ms"] = _ms(over_budget)
    figures["python_re_evil_pattern_22_chars_ms"] = _ms(
        lambda: re.search(r"^(a+)+\Z", "a" * 22 + "!"), repeat=1)
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:42} {value:12.2f}")
