"""A step's checkpoint text, composed from what is kept per process, is byte for byte what the
store writes for `recovery.capture`'s dict, whatever changed since the last one; where it
cannot be (an exit request, text that is not ASCII, a counter that is not an int) it says so
and the whole way is taken."""

from __future__ import annotations

import json
from typing import Any

from broker import CallTool, Kernel, Observation
from broker.kernel.checkpoint_text import state_text
from broker.kernel.process import AgentProcess
from broker.kernel.recovery import action_to_json, capture, save_step
from broker.store.durable import _storable_json
from tests.conftest import open_image


class Snapshots:
    def __init__(self, state: Any) -> None:
        self.state = state

    async def next_action(self, history: Any) -> Any:
        raise AssertionError("not driven here")

    def snapshot(self) -> Any:
        return self.state


def _whole(proc: AgentProcess, pending: CallTool | None, audit_from: int | None) -> str:
    state = capture(proc, pending)
    if audit_from is not None:
        state["audit_from"] = audit_from
    return _storable_json(state)


def _same(proc: AgentProcess, pending: CallTool | None = None, audit_from: int | None = None
          ) -> None:
    text = state_text(proc, action_to_json(pending) if pending else None, audit_from)
    assert text == _whole(proc, pending, audit_from)


async def test_the_text_is_the_stores_for_every_change(kernel: Kernel) -> None:
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    action = CallTool("now", {"n": [1, 2.5, None, True], "s": "a\"b\\c\n"})
    _same(proc)
    _same(proc, action, 41)
    for change in (lambda: setattr(proc, "cwd", "/w/x"),
                   lambda: setattr(proc, "pause_requested", True),
                   lambda: setattr(proc, "history_from", 7),
                   lambda: setattr(proc, "label", frozenset({"secret", "pii"})),
                   lambda: setattr(proc.usage, "steps", 12),
                   lambda: setattr(proc.usage, "log_bytes", 1 << 40),
                   lambda: setattr(proc, "planner", Snapshots({"turns": 3, "first": 1})),
                   lambda: setattr(proc, "planner", Snapshots(None))):
        change()  # the kept text follows each change (a stale one would differ here)
        _same(proc)
        _same(proc, action, 99)


async def test_what_it_does_not_cover_goes_the_whole_way(kernel: Kernel) -> None:
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    assert state_text(proc, {"tool": "echo", "args": {"s": "é"}}, 1) is None  # not ASCII
    assert state_text(proc, {"tool": "echo", "args": {"s": "\udc80"}}, 1) is None
    proc.cwd = "/wé"
    assert state_text(proc, None, None) is None
    proc.cwd = "/"
    proc.usage.steps = True  # type: ignore[assignment]
    assert state_text(proc, None, None) is None
    proc.usage.steps = 1
    proc.exit_request = (0, {"r": [1]})
    assert state_text(proc, None, None) is None
    # ... and those are stored as before: a lone surrogate escaped, the checkpoint readable.
    save_step(kernel.store, proc, 0, pending=CallTool("echo", {"s": "\udc80"}))
    kernel.store.commit_deferred()
    stored = kernel.store.checkpoint(proc.pid)
    assert stored["state"]["pending"] == {"tool": "echo", "args": {"s": "\udc80"}}
    assert stored["state"]["exit_request"] == [0, {"r": [1]}]


async def test_a_steps_checkpoints_are_stored_as_captured(kernel: Kernel) -> None:
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    proc.cwd = "/w"
    proc.label = frozenset({"l1"})
    save_step(kernel.store, proc, 3, pending=CallTool("now", {}))
    kernel.store.commit_deferred()
    stored = kernel.store.checkpoint(proc.pid)
    assert stored["step"] == 3
    assert stored["state"] == {**capture(proc, CallTool("now", {})),
                               "audit_from": stored["state"]["audit_from"]}
    assert isinstance(stored["state"]["audit_from"], int)


async def test_a_checkpoint_after_a_step_is_stored_as_it_was_when_saved(kernel: Kernel) -> None:
    """Deferred, it is written as it was when saved: what changed before the commit (the
    next step's counters, cwd, a planner's snapshot changed in place) is not in it."""
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    proc.planner = Snapshots({"turns": 2})
    proc.usage.steps = 4
    save_step(kernel.store, proc, 5, observation=Observation(4, CallTool("now", {}), result=1))
    saved = json.loads(json.dumps(capture(proc, None)))  # (a copy: the snapshot changes)
    proc.usage.steps, proc.cwd = 5, "/elsewhere"
    proc.planner.state["turns"] = 3  # (a snapshot the planner goes on changing)
    kernel.store.commit_deferred()
    stored = kernel.store.checkpoint(proc.pid)
    assert stored["step"] == 5 and stored["state"] == saved
    assert saved["usage"]["steps"] == 4 and saved["planner"] == {"turns": 2}


class _Agreeable(str):
    """A str that says it equals anything: must never find text kept for another value."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


async def test_kept_text_is_found_only_for_the_same_values(kernel: Kernel) -> None:
    await open_image(kernel, "job")
    proc = kernel.process(kernel.spawn("job", caps=["clock:*:read"]))
    _same(proc)  # the text is kept now, made from cwd "/"
    proc.cwd = _Agreeable("/elsewhere")
    assert state_text(proc, None, None) is None  # the whole way, not "/"'s kept text
    proc.pause_requested = 0  # type: ignore[assignment]  # (not False)
    proc.cwd = "/"
    assert state_text(proc, None, None) is None
    proc.pause_requested = False
    proc.cwd = "".join(["/", "w"])  # an equal value, another object: found by equality
    _same(proc)
    proc.cwd = "/w"
    _same(proc)


async def test_processes_alike_share_text_but_each_names_itself(kernel: Kernel) -> None:
    """The parts that do not name the process are made once for processes alike: each one's
    text still names its own objects, and a label not of plain str is never taken for
    another's (1 for True)."""
    await open_image(kernel, "job")
    procs = [kernel.process(kernel.spawn("job", caps=["clock:*:read"])) for _ in range(3)]
    for proc in procs:
        _same(proc, CallTool("now", {}), 5)
        assert f'"objects":"proc/{proc.pid}"' in state_text(proc, None, None)
    first, second, third = procs
    first.label = frozenset({True})  # type: ignore[arg-type]
    _same(first)
    second.label = frozenset({1})  # type: ignore[arg-type]  # (equal to {True}, and alike)
    _same(second)
    third.label = frozenset({"1"})
    _same(third)
