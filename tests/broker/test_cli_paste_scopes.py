"""The scopes `libos approvals show` offers for `--always --scope S` are pasted too (red team,
lane rspeople; LOW: the person must copy one into the printed line). The narrowest is the
resource itself, a path the model chose: `/out/$(touch${IFS}owned)` was printed as it is,
so the line a person made of it ran the model's command in their shell (red team 38 quoted
the id, not these). Now each choice is one word for the shell (`inert.pasted`)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.test_cli_approvals import _ask, libos


async def test_a_pasted_scope_runs_nothing_of_the_resource(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery, tmp_path: Path) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    resource = "/out/$(touch${IFS}owned)`touch${IFS}owned`;touch${IFS}owned"
    request = await _ask(kernel, nursery, pid, [], path=resource, data="x")
    view = libos(db_path, "approvals", "show", request["id"]).stdout
    line = next(line for line in view.split("\n") if "--scope S" in line)
    template, choices = line.split("libos ", 1)[1].split("   S one of: ")
    narrowest = choices.split(", ")[0]  # this resource exactly, as the person copies it
    command = template.replace(" S", " " + narrowest)
    # The person's shell, as it reads the pasted line (`:` runs nothing of its own).
    subprocess.run(["sh", "-c", f": {command}"], capture_output=True, timeout=30,
                   cwd=tmp_path)
    assert not (tmp_path / "owned").exists(), command
    argv = shlex.split(command)
    assert argv[argv.index("--scope") + 1] == resource  # one word, the resource itself
    # The neighbour: that line, as the shell hands it to libos, answers the request.
    done = libos(db_path, *argv)
    assert done.returncode == 0, done.stderr
    with trio.fail_after(10):
        while kernel.store.get_approval(request["id"])["state"] == "pending":
            kernel.queue.sweep()
            await trio.sleep(0.05)
    answered: dict[str, Any] = kernel.store.get_approval(request["id"])
    assert (answered["answer"], answered["scope"]) == ("always", resource)
