"""Red team 44 (syscall surface): a deny rule `git push *` did not cover `git push` with no
arguments (the argv pattern's ` *` needs a space and more after it), so a process allowed
`git *` pushed its current branch past the rule."""

from __future__ import annotations

import pytest

from broker import Kernel, NotCapable
from tests.conftest import ALL_BUILTINS, open_image

DENY = {"kind": "shell", "scope": "git push *", "rights": ["run"], "effect": "deny"}


async def test_a_deny_rule_with_a_trailing_star_covers_the_bare_command(kernel: Kernel) -> None:
    await open_image(kernel, needs=("shell:*:run", "fs:/**:read,write"),
                     tools=(*ALL_BUILTINS, "run_command"))
    pid = kernel.spawn("agent", caps=["shell:git *:run", DENY])
    for argv in (["git", "push"], ["git", "push", "origin"]):
        before = len(kernel.audit())
        with pytest.raises(NotCapable, match="denied by a rule"):
            await kernel.call_tool(pid, "run_command", {"argv": argv})
        [denied] = [r for r in kernel.audit()[before:] if r["phase"] == "denied"]
        assert denied["syscall"] == "shell.run"
    # the neighbours: another git command runs, and `git pushx` is not `git push`
    out = await kernel.call_tool(pid, "run_command", {"argv": ["git", "--version"]})
    assert out["exit_code"] == 0 and out["stdout"].startswith("git version")
    out = await kernel.call_tool(pid, "run_command", {"argv": ["git", "pushx"]})
    assert out["exit_code"] != 0 and "pushx" in out["stderr"]
