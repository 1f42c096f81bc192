"""A planner's action out of shape (a model's `CallTool(7)`, args that are not a map) is
refused as its step's error and the process goes on: the planner is shown that step again as
it chose it. Its history row used to be read back through the scripted planner's parser, so
the next step's look at the history (an LLM planner renders all of it) raised `not an
action`, ending the process with exit 1, and `process.history` raised too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from broker import CallTool, Exit, Kernel
from broker.planner import Action, Observation
from broker.render import action_text, history
from broker.run import transcript
from tests.conftest import open_image


class _ReadsAll:
    """Each step reads every observation so far, then takes its next scripted action."""

    def __init__(self, actions: list[Action]) -> None:
        self.actions, self.seen = actions, []

    async def next_action(self, history: Sequence[Observation]) -> Action:
        self.seen = [(o.action, o.error and o.error["code"]) for o in history]
        return self.actions.pop(0)


async def test_an_action_out_of_shape_is_refused_and_the_process_goes_on(
        db_path: Path) -> None:
    planner = _ReadsAll([CallTool(7), CallTool("now", [1]), CallTool("now"),  # type: ignore
                         Exit(0, "done")])
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read"], planner=planner)
        assert (await kernel.wait(pid))["exit_code"] == 0
        assert planner.seen == [(CallTool(7), "INVALID_ARGUMENT"),  # type: ignore[arg-type]
                                (CallTool("now", [1]), "INVALID_ARGUMENT"),  # type: ignore
                                (CallTool("now"), None)]
        refused = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
        assert [r["syscall"] for r in refused] == ["tool.call"]  # (the name's, recorded)
    async with Kernel.open(db_path) as kernel:  # read back from the store alone
        assert [o.action for o in kernel.process(pid).history][:3] == [
            CallTool(7), CallTool("now", [1]), CallTool("now")]  # type: ignore[arg-type]
        assert "7({})" in str(history(kernel.process(pid))[0])  # (the history view)


def test_a_step_of_any_shape_reads_for_people(db_path: Path) -> None:
    """What `libos run` and the history view print of such steps (and of a row edited to no
    action, which reads back as none, red team 29): a line each, never an AttributeError."""
    steps = [Observation(0, CallTool(7, {"a": {1}})), Observation(1, None, error={  # type: ignore
        "code": "INVALID_ARGUMENT", "message": "m"}), Observation(2, Exit(0), result=1)]
    lines, upto = transcript(None, steps, 1)
    assert upto == 3 and [str(t).split("\n")[0] for t in lines] == [
        "[1] → 7({\"a\": \"{1}\"})", "[1] → (no action known)", "[1] → exit(0)"]
    assert [action_text(o.action) for o in steps] == ["7({\"a\": \"{1}\"})",
                                                      "(no action known)", "exit(0)"]
