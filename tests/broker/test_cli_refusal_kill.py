"""Red team (rt/holes): is `libos approve`'s refusal durable when the command returns, or
only once something at the CLI's shutdown (a finalizer closing its store) commits it? The
command is run for real in a child that is killed (SIGKILL) the moment `main` returns, before
any finalizer or atexit hook; the broker holding the store then audits what it finds.

Refuted, on both backends: `answer_in_store` logs the refusal in a transaction of its own
(`log_approval_reject`), committed before the command reports the error. (The test fails
when that write is made to wait for a later commit instead.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Kernel
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.conftest import bare_env

# `main`, then SIGKILL at once: no return to the interpreter's shutdown.
KILLED_ON_RETURN = ("import os, signal, sys\n"
                    "from broker.cli import main\n"
                    "code = main(sys.argv[1:])\n"
                    "print(code, flush=True)\n"
                    "os.kill(os.getpid(), signal.SIGKILL)\n")


@pytest.fixture
async def kernel(store_at: Path | str) -> AsyncIterator[Kernel]:
    async with Kernel.open(store_at) as k:
        yield k


def _refusals(kernel: Kernel) -> list[dict[str, object]]:
    return [r["detail"] for r in kernel.audit()
            if r["syscall"] == "approval.answer" and r["phase"] == "rejected"]


@pytest.mark.parametrize("args", [["approve", "apr_nosuch"], ["deny", "apr_nosuch"],
                                  ["answer", "apr_nosuch", "yes"]],
                         ids=["approve", "deny", "answer"])
async def test_a_cli_refusal_is_durable_when_the_command_returns(
        kernel: Kernel, store_at: Path | str, args: list[str]) -> None:
    await _proc(kernel, ASK_WRITE)  # (a broker that holds the store, as in use)
    before = len(_refusals(kernel))
    child = subprocess.run([sys.executable, "-c", KILLED_ON_RETURN, "--db", str(store_at),
                            *args], capture_output=True, text=True, timeout=120,
                           env=bare_env(XDG_STATE_HOME=os.environ.get("XDG_STATE_HOME", "")),
                           cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["2"], child.stdout  # refused: the error exit
    kernel.queue.sweep()  # what the broker's watcher does within a moment
    refusals = _refusals(kernel)[before:]
    assert [(r["request"], r["error"]) for r in refusals] == [("apr_nosuch", "NOT_FOUND")]
    assert str(refusals[0]["who"]).startswith("cli:")
    assert kernel.verify_audit()[1] == []
