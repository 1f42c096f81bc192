"""A Ctrl-C never lands inside the store's own synchronous work: `protect_from_ctrl_c`.

trio raises KeyboardInterrupt wherever the SIGINT finds the main thread, unless that code is
marked protected: then it reaches the main task at its next checkpoint, where it cancels the
run as any error does. Landing between two statements of the store, it breaks what only holds
when they run together: between a COMMIT and the move of the chain's head in memory, every
later append repeats a sequence number and the store refuses it for good, so the kernel's
last writes, and the callers waiting for their outcomes to be durable, wait for ever. A CLI
command runs trio with every Ctrl-C restricted to checkpoints (`broker.command_trio`); a
program that uses the store (with a kernel or alone) in a `trio.run` of its own gets it from
this marking, which every store makes of its own type as it opens (and for a sandbox
service's own tasks from `DenoSandbox._system_serve`).

Here, below the kernel, so that a store opened alone is marked too; trio is imported only
when a store opens (a program that imports the store to read a path pays nothing)."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

_marked: set[type] = set()


def protect_from_ctrl_c(store_type: type) -> None:
    """Mark the code of every method of the store's classes (its own, in `broker.store`)
    protected from KeyboardInterrupt, functions nested in them included; once per type. What
    they call is covered too: trio looks for the innermost marked caller."""
    if store_type in _marked:
        return
    import trio

    for klass in store_type.__mro__:
        if klass.__module__.startswith("broker.store."):
            for member in list(vars(klass).values()):
                for code in _function_codes(member):
                    trio.lowlevel.enable_ki_protection(_Code(code))
    _marked.add(store_type)


class _Code:
    """What `enable_ki_protection` marks: a code object, as a function carries it."""

    __slots__ = ("__code__",)

    def __init__(self, code: types.CodeType) -> None:
        self.__code__ = code


def _function_codes(value: Any) -> Iterator[types.CodeType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        for accessor in (value.fget, value.fset, value.fdel):
            if accessor is not None:
                yield from _function_codes(accessor)
        return
    seen = 0
    while seen < 8 and value is not None:  # a decorator's wrapper and what it wraps
        code = getattr(value, "__code__", None)
        if isinstance(code, types.CodeType):
            yield from _nested(code)
        value, seen = getattr(value, "__wrapped__", None), seen + 1


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested(const)
