"""Patterns in RE2 (google-re2): matching in time linear in the input, never Python's `re`."""

from __future__ import annotations

from typing import Any

import re2

from broker.errors import InvalidArgument
from broker.schema.bounds import MAX_PATTERN_CHARS, RE2_MAX_MEM


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    options.never_capture = True
    return options


_OPTIONS = _re2_options()


class Regex:
    """An RE2 pattern answering the two questions fastjsonschema's code asks, `search` and
    `match`, yes or no. (google-re2's public `search` also builds a match object with decoded
    offsets, about four times the cost of the answer; the pinned binding's `_re2.RE2` gives
    the answer alone.)"""

    __slots__ = ("_re2", "size")

    def __init__(self, compiled: Any) -> None:
        self._re2 = compiled
        # RE2 instructions. Matching costs a step of its DFA per byte, but a pattern whose DFA
        # outgrows its memory (`(?:.{1,1000})x$`) runs on the NFA, about `size` steps a byte.
        self.size: int = compiled.ProgramSize()

    def search(self, text: str) -> bool:
        return self._ask(_Binding.UNANCHORED, text)

    def match(self, text: str) -> bool:
        return self._ask(_Binding.ANCHOR_START, text)

    def _ask(self, anchor: Any, text: str) -> bool:
        if not isinstance(text, str):
            raise TypeError(f"a pattern matches text, not {type(text).__name__}")
        data = text.encode()
        return self._re2.Match(anchor, data, 0, len(data))[0] != _Binding.NO_MATCH


class _Binding:
    """google-re2's own names, in one place."""

    RE2 = re2._re2.RE2
    UNANCHORED = re2._Anchor.UNANCHORED
    ANCHOR_START = re2._Anchor.ANCHOR_START
    NO_MATCH = re2._NULL_SPAN


def compile_regex(pattern: Any) -> Regex:
    """An RE2 regular expression (matching in time linear in the input), or InvalidArgument."""
    if not isinstance(pattern, str):
        raise InvalidArgument("a pattern must be a string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgument(f"a pattern is longer than {MAX_PATTERN_CHARS} characters")
    return re2_compile(pattern)


def re2_compile(pattern: str) -> Regex:
    try:
        compiled = _Binding.RE2(pattern.encode(), _OPTIONS)
    except (re2.error, ValueError, TypeError) as exc:  # e.g. a lone surrogate
        raise InvalidArgument(f"pattern {pattern[:80]!r} is not accepted by RE2: "
                              f"{error_text(exc)}") from None
    if not compiled.ok():
        raise InvalidArgument(f"pattern {pattern[:80]!r} is not accepted by RE2: "
                              f"{error_text(ValueError(compiled.error()))}")
    return Regex(compiled)


def error_text(exc: BaseException) -> str:
    message = exc.args[0] if exc.args else exc
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message)[:200]
