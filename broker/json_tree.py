"""A JSON-like tree rebuilt without recursion of Python's: a call's arguments may nest up to
`json_text.MAX_STORED_DEPTH` levels, and a walk that goes down two or three Python frames a
level (`copy.deepcopy`, a comprehension per container) passes the recursion limit short of
that (RecursionError: a call failed for its depth alone)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _same(value: Any) -> Any:
    return value


def rebuild(value: Any, *, leaf: Callable[[Any], Any] = _same, key: Callable[[Any], Any] = _same,
            tuples: bool = True) -> Any:
    """A new tree of `value`'s dicts, lists and tuples (tuples as lists unless `tuples`),
    each key through `key` and everything else through `leaf`. Children are done in order, so
    of two keys `key` makes alike the later wins, as in a dict display."""
    top: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, top, 0)]
    frozen: list[tuple[Any, Any, list[Any]]] = []  # lists to make tuples once filled
    while stack:
        item, parent, at = stack.pop()
        if isinstance(item, dict):
            out: Any = {}
            stack.extend((v, out, key(k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            out = [None] * len(item)
            stack.extend((item[i], out, i) for i in reversed(range(len(item))))
            if tuples and isinstance(item, tuple):
                frozen.append((parent, at, out))
        else:
            out = leaf(item)
        parent[at] = out
    for parent, at, filled in reversed(frozen):  # the innermost first: each holds its own
        parent[at] = tuple(filled)
    return top[0]


def copy_tree(value: Any) -> Any:
    """`copy.deepcopy` of a call's arguments (their only mutable leaves: bytearrays)."""
    return rebuild(value, leaf=lambda v: bytearray(v) if isinstance(v, bytearray) else v)
