"""Red team (session 15): a step that registers a tool through the builtin `register_tool`,
the commit of its outcome failing: the registration is taken back (a `taken_back` outcome
after the one that said it was registered). A crash before the step's own outcome is
stored: recovery hands the planner the step's result from the one syscall the builtin made.
It must be what the chain ends with (taken back: `Conflict`), never the first outcome's
"registered" for a tool the reloaded process does not have. Real SQLite, a trigger refusing
`process_tools` inserts (`faulty_store`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import AgentImage, CallTool, Conflict, NotFound
from broker.kernel.recovery import capture
from tests.broker.kernel.crashing import as_a_step, let_go_as_a_crash
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_register_fails import NIL, _kernel


async def test_a_step_whose_registration_was_taken_back_is_not_recovered_as_registered(
        db_path: Path, tmp_path: Path) -> None:
    args = {"name": "bad", "lang": "wat", "source": NIL}
    async with _kernel(db_path, tmp_path) as kernel:
        await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                               needs=("tool:*:register,call",)))
        pid = kernel.spawn("reg", caps=["tool:wat:register"])
        proc = kernel.process(pid)
        state = capture(proc, CallTool("register_tool", args))  # the step, in flight
        state["audit_from"] = kernel.store.head_seq
        kernel.store.save_checkpoint(pid, 0, state)
        with Fault(db_path) as fault:
            fault.install("process_tools")
            fault.set(True)
            with pytest.raises(Conflict, match="taken back"):
                await as_a_step(kernel, pid, "register_tool", args)
            fault.set(False)
        kernel.store.commit_deferred()  # its outcome, then the record taking it back
        kernel.store.update_process(pid, state="running")
        kernel.store.close = lambda: None  # type: ignore[method-assign]  # "crash"
    let_go_as_a_crash(kernel.store)
    async with _kernel(db_path, tmp_path) as kernel:
        step = kernel.process(pid).history[-1]
        assert step.action.name == "register_tool"
        assert step.result is None and step.error is not None
        assert step.error["code"] == Conflict.code
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "bad", {})
        assert kernel.verify_audit()[1] == []
