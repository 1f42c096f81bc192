"""Compiling a schema once (least recently used cache, by its canonical JSON) and checking
values against it: bounded, pure, with typed errors only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastjsonschema import JsonSchemaValueException
from fastjsonschema.ref_resolver import RefResolver

from broker.errors import InvalidArgument, LimitExceeded
from broker.json_text import encoder
from broker.lru import Lru
from broker.schema.bounds import (
    MAX_CHECK_STEPS,
    MAX_CODE_CHARS,
    MAX_DATA_DEPTH,
    MAX_PATTERN_PROGRAM,
    MAX_PATTERNS,
    MAX_SCHEMA_BYTES,
    NO_FETCH,
    Shape,
    refuse_outside_refs,
)
from broker.schema.generator import NotANumber, Steps, TooCostly, generator_for
from broker.schema.regex import Regex, compile_regex, error_text

CACHE_SIZE = 256
# What compiled schemas may hold in all, counted as their generated code's characters (a
# compiled schema takes about twice that in memory: 475 KiB for one of MAX_CODE_CHARS).
CACHE_CODE_CHARS = 32 << 20
# A schema's canonical text up to this long is its own cache key (hashing it cost more than
# the look-up); a longer one is keyed by its sha256, so the keys stay small beside the code.
MAX_TEXT_KEY = 1024
_canonical_text = encoder(sort_keys=True, allow_nan=False)  # json.dumps's text, built once


class Schema:
    """A compiled, bounded validator. `check` raises InvalidArgument and never changes the
    value it checks."""

    __slots__ = ("_recursive", "_validate", "size")

    def __init__(self, validate: Callable[[Any], Any], recursive: bool, size: int = 0) -> None:
        self._validate = validate
        self._recursive = recursive
        self.size = size  # its generated code's characters: what a cache counts it as

    def check(self, value: Any, what: str) -> None:
        if self._recursive and _deeper_than(value, MAX_DATA_DEPTH):
            raise InvalidArgument(f"{what}: nested deeper than {MAX_DATA_DEPTH}")
        try:
            self._validate(value, Steps(MAX_CHECK_STEPS))
        except JsonSchemaValueException as exc:
            raise InvalidArgument(f"{what}: {exc.message}") from None
        except NotANumber as exc:
            raise InvalidArgument(f"{what}: {exc}") from None
        except TooCostly:
            raise LimitExceeded(f"{what}: checking the value against its schema takes more "
                                f"than {MAX_CHECK_STEPS} steps") from None
        except (ArithmeticError, RecursionError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{what}: the value cannot be checked "
                                  f"({type(exc).__name__})") from None


def _deeper_than(value: Any, limit: int) -> bool:
    level = [value]
    for _ in range(limit + 1):
        level = [v for c in level
                 for v in (c.values() if isinstance(c, dict) else c if isinstance(c, list)
                           else ())]
        if not level:
            return False
    return True


def canonical(schema: Any) -> str:
    """The schema as canonical JSON (sorted keys, no spaces), or InvalidArgument."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidArgument("a schema must be a JSON object (or a boolean)")
    try:
        text = _canonical_text(schema)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(f"a schema must be plain JSON ({type(exc).__name__})") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidArgument("a schema must be plain JSON (text that is not Unicode: a lone "
                              "surrogate)") from None
    if size > MAX_SCHEMA_BYTES:
        raise InvalidArgument(f"schema larger than {MAX_SCHEMA_BYTES} bytes")
    return text


def _compile(text: str) -> Schema:
    source = json.loads(text)  # a private copy: fastjsonschema rewrites refs in place
    refuse_outside_refs(source)
    shape = Shape(source)
    if len(shape.patterns) > MAX_PATTERNS:
        raise InvalidArgument(f"schema has more than {MAX_PATTERNS} patterns")
    patterns = _compile_patterns(shape.patterns)
    _, recursive = shape.visits_per_value()
    definition = json.loads(text)
    try:
        resolver = RefResolver.from_schema(definition, handlers=NO_FETCH, store={})
        generator = generator_for(definition)(
            definition, resolver=resolver, use_default=False, detailed_exceptions=False,
            patterns=patterns)
        code = generator.func_code
        if len(code) > MAX_CODE_CHARS:
            raise InvalidArgument(f"schema compiles to more than {MAX_CODE_CHARS} characters "
                                  "of code")
        state = generator.global_state
        exec(compile(code, "<schema>", "exec"), state)
        validate = state[resolver.get_scope_name()]
    except InvalidArgument:
        raise
    except Exception as exc:  # a hostile schema must not reach a caller as anything but this
        raise InvalidArgument(f"bad schema: {error_text(exc)}") from None
    return Schema(validate, recursive, len(code))


def _compile_patterns(patterns: set[str]) -> dict[str, Regex]:
    """Each pattern compiled once, the smallest first; their RE2 programs bounded in all (a
    compile takes up to milliseconds, growing with the program: 128 large ones held the
    broker's thread for 0.6 s)."""
    compiled: dict[str, Regex] = {}
    total = 0
    for pattern in sorted(patterns, key=len):
        compiled[pattern] = regex = compile_regex(pattern)
        total += regex.size
        if total > MAX_PATTERN_PROGRAM:
            raise InvalidArgument(f"schema's patterns compile to more than "
                                  f"{MAX_PATTERN_PROGRAM} RE2 instructions in all")
    return compiled


_cache: Lru[str | bytes, Schema] = Lru(CACHE_SIZE, CACHE_CODE_CHARS, lambda s: s.size)


def compile_schema(schema: Any, what: str = "schema") -> Schema:
    """Compile (or find in the cache) a schema from a process or an image. InvalidArgument,
    prefixed with `what`, for anything refused."""
    try:
        text = canonical(schema)
        key = text if len(text) <= MAX_TEXT_KEY else hashlib.sha256(text.encode()).digest()
        found = _cache.get(key)
        if found is not None:
            return found
        compiled = _compile(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None
    _cache[key] = compiled
    return compiled


def validate(schema: Any, value: Any, what: str) -> None:
    """Check `value` against `schema` (compiled once); InvalidArgument if it does not fit."""
    compile_schema(schema, what).check(value, what)
