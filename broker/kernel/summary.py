"""What an audit record's detail keeps of arguments, results and messages: a bounded picture.

The full arguments of a `tool.call` and a syscall's full result are kept beside their records
(for replay, up to 1 MiB each); the detail only summarizes. A summary cuts each string (at
256 characters, saying how much was cut), keeps 32 items a level and 4 levels, and holds at
most `MAX_SUMMARY_CHARS` of text in all besides a top-level map's keys and plain values:
past that, what is left is "…". So a record's size
does not grow with what a tool sends (8 MiB of nested strings once made a 9 MB record, and
every refused attempt may write one).
"""

from __future__ import annotations

import json
import re
from itertools import islice
from typing import Any

MAX_DETAIL_STRING = 256
MAX_DETAIL_ITEMS = 32
MAX_DETAIL_DEPTH = 4
MAX_SUMMARY_CHARS = 8192
MORE = "…"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Tuples, not unions (`str | bytes`): a union in `isinstance` is built anew at each call.
_PLAIN = (str, bool, int, float, bytes, bytearray)
_BYTES = (bytes, bytearray)
_BYTES_VIEW = (bytes, bytearray, memoryview)
_NUMBERS = (bool, int, float)
_SEQUENCES = (list, tuple)
_SCALARS = frozenset({bool, int, float})


def _size(value: bytes | bytearray | memoryview) -> int | None:
    """Bytes a value holds: a view's items may be wider than a byte; a released view holds
    none it can tell (None)."""
    if type(value) is memoryview:
        try:
            return value.nbytes
        except ValueError:
            return None
    return len(value)


def summarize(value: Any) -> Any:
    """A bounded, JSON-safe picture of arguments or results for the audit detail. The plain
    values of a top-level map (a name, a path: what records are searched by) are always
    kept, whatever comes before them; containers share the budget."""
    if type(value) is dict and len(value) <= MAX_DETAIL_ITEMS:
        if not value:
            return {}  # (a call without arguments, a builtin's usual: nothing to picture)
        items: Any = value.items()  # (a plain map's length is its items': none to cut)
    elif isinstance(value, dict):
        items = islice(value.items(), MAX_DETAIL_ITEMS)
    else:
        kind = type(value)
        if value is None or kind in _SCALARS or (kind is str and len(value) <= MAX_DETAIL_STRING):
            return value  # (what `_Summary.of` gives a number or a short text, all of it)
        return _Summary().of(value, 0)
    # The containers' budget, kept here until a container needs a `_Summary` (most maps hold
    # none, or one flat map: a tool's arguments).
    summary: _Summary | None = None
    left = MAX_SUMMARY_CHARS
    out: dict[str, Any] = {}
    for key, item in items:
        kind = type(item)  # (the usual kinds told apart without a call: a warm call's cost)
        if (kind is str and len(item) <= MAX_DETAIL_STRING) or item is None or kind in _SCALARS:
            shown = item  # (plain values spend nothing of the containers' budget)
        elif isinstance(item, _PLAIN):
            shown = _plain(item)
        else:
            flat = _flat(item, left) if kind is dict and summary is None else None
            if flat is not None:
                shown, left = flat
            else:
                if summary is None:
                    summary = _Summary(left)
                flat = summary.flat(item) if kind is dict else None
                shown = summary.of(item, 1) if flat is None else flat[0]
        out[key if type(key) is str and len(key) <= MAX_DETAIL_STRING else cut(str(key))] = shown
    return out


def without_surrogates(value: Any) -> Any:
    """Arguments whose text is not Unicode (a lone surrogate: JSON can escape one, and host
    code can hold one) as a record can keep them, each such character shown as U+FFFD."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return json.loads(_SURROGATE.sub("\ufffd", text))


def cut(text: str) -> str:
    """A string as a detail keeps it."""
    if len(text) <= MAX_DETAIL_STRING:
        return text
    return text[:MAX_DETAIL_STRING] + f"{MORE}(+{len(text) - MAX_DETAIL_STRING} chars)"


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, _BYTES):
        return {"bytes": len(value)}
    return value


class _Summary:
    __slots__ = ("left",)

    def __init__(self, left: int = MAX_SUMMARY_CHARS) -> None:
        self.left = left  # characters of text still to spend

    def of(self, value: Any, depth: int) -> Any:
        if self.left <= 0:
            return MORE
        kind = type(value)
        if kind is str and len(value) <= MAX_DETAIL_STRING:
            self.left -= len(value)
            return value
        if value is None or kind in _SCALARS:
            self.left -= 1
            return value
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, _BYTES_VIEW):
            return {"bytes": _size(value)}
        if value is None or isinstance(value, _NUMBERS):
            self.left -= 1
            return value
        if depth >= MAX_DETAIL_DEPTH:
            return MORE
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for i, (key, item) in enumerate(value.items()):
                if i == MAX_DETAIL_ITEMS or self.left <= 0:
                    break
                shown = self.of(item, depth + 1)  # (before its key is spent, as ever)
                if type(key) is str and len(key) <= MAX_DETAIL_STRING:
                    self.left -= len(key)
                else:
                    key = self._text(str(key))
                out[key] = shown
            return out
        if isinstance(value, _SEQUENCES):
            return [self.of(item, depth + 1) for item in value[:MAX_DETAIL_ITEMS]]
        return self._text(repr(value)[:MAX_DETAIL_STRING])

    def flat(self, value: dict[Any, Any]) -> tuple[dict[Any, Any], int] | None:
        """`_flat` of this summary's budget, spent."""
        found = _flat(value, self.left)
        if found is not None:
            self.left = found[1]
        return found

    def _text(self, text: str) -> str:
        shown = cut(text)
        self.left -= len(shown)
        return shown


def _flat(value: dict[Any, Any], left: int) -> tuple[dict[Any, Any], int] | None:
    """`_Summary.of(value, 1)` of a map of at most `MAX_DETAIL_ITEMS` plain values (short
    strings, numbers, None) under short string keys that the budget (`left` characters)
    covers: that copy, made without a call per item (a tool's arguments are mostly such a
    map), and the budget left after it. None, spending nothing, for any other map: `of` then
    makes its summary."""
    if left <= 0 or len(value) > MAX_DETAIL_ITEMS:
        return None
    for key, item in value.items():
        kind = type(item)
        if kind is str and len(item) <= MAX_DETAIL_STRING:
            left -= len(item)
        elif item is None or kind in _SCALARS:
            left -= 1
        else:
            return None
        if type(key) is not str or len(key) > MAX_DETAIL_STRING:
            return None
        left -= len(key)
        if left <= 0:  # the budget ran out at this item: `of` cuts what follows
            return None
    return dict(value), left
