"""A Ctrl-C never lands between two statements of the store's work, nor crashes trio from a
sandbox service's task; a CLI command takes it at a checkpoint. Each scenario raises a real
SIGINT at a chosen line, in a process of its own (`ctrl_c_scenarios`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def scenario(name: str, where: Path, *, own_group: bool = False) -> dict[str, Any]:
    """`own_group`: the scenario leads a process group of its own (it sends SIGINT to all of
    it, as a terminal does; not to the test runner)."""
    done = subprocess.run([sys.executable, "-m", "tests.broker.kernel.ctrl_c_scenarios", name,
                           str(where)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          start_new_session=own_group)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_ctrl_c_right_after_a_commit_leaves_the_store_writing(tmp_path: Path) -> None:
    # Without the store's code protected, it lands between the COMMIT and the head's move in
    # memory: the next append repeats a sequence number, and the kernel's last writes (the
    # anchor's signature) are refused.
    seen = scenario("after_a_commit", tmp_path)
    assert seen["protected"] == [True]
    assert "landed inside" not in seen
    assert (seen["first"], seen["second"]) == (1, 2)
    assert seen["run"] == "KeyboardInterrupt"  # delivered all the same: at the next checkpoint
    assert seen["problems"] == []
    assert seen["probes"] == ["probe.first", "probe.second"]  # each once


def test_a_ctrl_c_right_after_a_commit_of_a_store_opened_alone_leaves_it_consistent(
        tmp_path: Path) -> None:
    # Only a kernel marked the store: one opened alone (the CLI's store-only commands, an
    # embedder) took the Ctrl-C between the COMMIT and the head's move.
    seen = scenario("store_alone_after_a_commit", tmp_path)
    assert seen["protected"] == [True]
    assert "landed inside" not in seen
    assert (seen["first"], seen["second"]) == (1, 2)
    assert seen["run"] == "KeyboardInterrupt"
    assert seen["problems"] == []
    assert seen["probes"] == ["probe.first", "probe.second"]


def test_a_ctrl_c_right_after_a_commit_of_a_store_only_command_leaves_it_consistent(
        tmp_path: Path) -> None:
    # No trio run, so no mark helps: the Ctrl-C landed between the COMMIT of the rotation's
    # record and the head's move, and the store was closed with its anchor signed behind it.
    seen = scenario("cli_store_only_after_a_commit", tmp_path)
    assert (seen["fired"], seen["exit"]) == (1, 130)  # interrupted all the same, afterwards
    assert seen["interrupted"] == seen["whole"]
    assert seen["whole"]["problems"] == []


def test_a_ctrl_c_in_a_sandbox_services_task_reaches_the_main_task(tmp_path: Path) -> None:
    # A service a system task owns: a KeyboardInterrupt out of it was a TrioInternalError.
    assert scenario("in_a_sandbox_service", tmp_path)["run"] == "KeyboardInterrupt"


def test_a_real_failure_beside_a_services_ctrl_c_is_logged_not_lost(tmp_path: Path) -> None:
    # The Ctrl-C alone was sent on: the disk's failure beside it in the group was said nowhere.
    seen = scenario("beside_a_real_failure", tmp_path)
    assert seen["run"] == "KeyboardInterrupt"
    assert len(seen["logged"]) == 1, seen["logged"]
    assert seen["logged"][0].startswith("the Deno sandbox service failed")
    assert "No space left on device" in seen["logged"][0]
    assert "KeyboardInterrupt" not in seen["logged"][0]  # (that one reached the main task)


def test_a_commands_ctrl_c_comes_at_a_checkpoint_not_between_statements(tmp_path: Path) -> None:
    seen = scenario("between_two_statements", tmp_path)
    assert seen == {"run": "KeyboardInterrupt", "reached": ["the next statement"]}


def test_a_real_failure_beside_a_commands_ctrl_c_is_reported_not_hidden(tmp_path: Path) -> None:
    # Any group that held the Ctrl-C was exit 130 and nothing said: the disk's failure too.
    seen = scenario("cli_failure_beside_ctrl_c", tmp_path)
    assert seen["alone"] == {"exit": 130, "stderr": ""}
    disk_full = ("INTERNAL: OSError: [Errno 28] No space left on device (LIBOS_DEBUG=1 shows"
                 " the traceback)\ninterrupted (Ctrl-C) while this failed\n")
    assert seen["in_a_task"] == {"exit": 70, "stderr": disk_full}
    assert seen["at_the_end"] == {"exit": 70, "stderr": disk_full}
    assert seen["typed"] == {"exit": 2, "stderr": "NOT_FOUND: no process 9\n"
                                                  "interrupted (Ctrl-C) while this failed\n"}
    # Any BrokenPipeError was taken for stdout's reader gone with the Ctrl-C: a peer's too.
    assert seen["broken_pipe"] == {"exit": 70, "stderr": (
        "INTERNAL: BrokenPipeError: [Errno 32] Broken pipe (LIBOS_DEBUG=1 shows the"
        " traceback)\ninterrupted (Ctrl-C) while this failed\n")}


def test_a_terminals_ctrl_c_while_a_module_compiles_in_a_child_is_a_lone_ctrl_c(
        tmp_path: Path) -> None:
    # The compile child was in the command's process group: the terminal's SIGINT ended it
    # too, and its failure came back as LimitExceeded ("did not compile within 20 s") beside
    # the Ctrl-C: reported as a failure, exit 2, for a Ctrl-C alone.
    seen = scenario("cli_ctrl_c_while_a_module_compiles", tmp_path, own_group=True)
    assert seen["sent"] == 1
    assert (seen["exit"], seen["stderr"]) == (130, "")
