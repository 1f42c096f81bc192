"""Red team (merged tree): the checkpoint text composed from a per-process cache
(`broker.kernel.checkpoint_text`) against hostile values and a cache that could go stale.
Each text must be byte for byte what the whole way stores, or the whole way taken. Hole found
(low: no model-reachable path sets such values; the host's own code can): the kept text was
found by equality, so a cwd that is a str subclass saying equal to anything, or a
history_from of True after 1, reused text made from another value. Fixed: a kept field not of
its plain type goes the whole way."""

from __future__ import annotations

import enum
from typing import Any

from broker import CallTool, Kernel
from broker.kernel.checkpoint_text import state_text
from broker.kernel.recovery import action_to_json, save_step
from tests.broker.kernel.test_checkpoint_text import Snapshots, _whole
from tests.conftest import open_image


class Sly(str):
    def __str__(self) -> str:
        return "other"

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class Steps(enum.IntEnum):
    ONE = 1


def _same_or_whole(proc: Any, pending: CallTool | None, audit_from: int | None) -> None:
    text = state_text(proc, action_to_json(pending) if pending else None, audit_from)
    if text is not None:
        assert text == _whole(proc, pending, audit_from)
        assert text.isascii()


async def test_hostile_values_compose_the_stores_text_or_go_the_whole_way(
        kernel: Kernel) -> None:
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    for args in ({"s": Sly("x")}, {"n": float("nan"), "i": float("inf")}, {"z": "\x00\x1f"},
                 {"big": "a" * (1 << 20)}, {"k": {1: (2, 3)}}, {"deep": [[[[["x"]]]]]},
                 {"u": "\u2028"}, {"s": "\ud800"}):
        _same_or_whole(proc, CallTool("now", args), 5)
    proc.usage.steps = Steps.ONE  # an int subclass: not a plain int, the whole way
    assert state_text(proc, None, None) is None
    proc.usage.steps = 2
    proc.planner = Snapshots({"set": {1}, "bytes": b"\x00", "t": (1, 2), 3: None})
    _same_or_whole(proc, None, None)
    proc.label = frozenset({Sly("a"), "b"})
    _same_or_whole(proc, None, None)
    proc.cwd = Sly("/w")  # compares equal to anything: it found the text kept for "/"
    _same_or_whole(proc, None, None)
    proc.cwd = "/"
    proc.history_from = 1
    _same_or_whole(proc, None, None)
    proc.history_from = True  # 1 == True: it found the text kept for 1
    _same_or_whole(proc, None, None)
    proc.history_from = 1
    proc.planner = Snapshots(None)  # the neighbour: a plain process still composes its text
    assert state_text(proc, None, None) == _whole(proc, None, None)


async def test_the_cache_follows_each_process_and_its_changes(kernel: Kernel) -> None:
    """Two processes, a fork, a cwd change, a pause request, labels: each text is its own."""
    await open_image(kernel, "job")
    a = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    b = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    for proc in (a, b, a, b):
        _same_or_whole(proc, None, None)
    b.checkpoint_text = a.checkpoint_text  # a copy of another's cache (as a shallow copy would)
    assert state_text(b, None, None) == _whole(b, None, None)
    save_step(kernel.store, a, 0)
    kernel.store.commit_deferred()
    child = kernel.process(kernel.fork(a.pid))
    child.checkpoint_text = a.checkpoint_text
    child.cwd, child.pause_requested, child.label = "/c", True, frozenset({"x"})
    assert state_text(child, None, None) == _whole(child, None, None)
    assert state_text(a, None, None) == _whole(a, None, None)
