"""Red team 39: a request whose id is not one the broker makes (a database writer renamed
its row: e3d3dee) is listed nowhere and refused by `libos approvals show`, but an answer to
it was written (and, its call gone, applied: a `once` grant for the process's next same
call) before the CLI or the kernel's API found, reading it back, that it is `Unreadable`: the
person was told it failed. Now the answer is refused before anything is written, typed,
through the CLI and the API alike; the neighbour request is answered as ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.store.json_column import Unreadable
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.kernel.test_signed_answers_redteam21 import _write
from tests.broker.store.conftest import raw
from tests.broker.test_cli_approvals import _ask, libos

_COLUMNS = ("kind, pid, inv, tool, syscall, resource, cap_kind, cap_right, cap_id, cap_scope,"
            " args, args_hash, reason, question, created, deadline, state, answer, who, scope,"
            " value, answered, applied, grant_id, labels, sig")


async def test_an_answer_to_an_id_not_of_the_brokers_form_writes_nothing(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    neighbour = await _ask(kernel, nursery, pid, results, path="/out/b.txt", data="b")
    renamed = request["id"][:-1] + "Z"  # (one character off the form: a writer's)
    _write(db_path, request["id"], {"id": renamed})
    refused = libos(db_path, "approve", renamed)
    assert refused.returncode == 2 and "not one the broker makes" in refused.stderr, (
        refused.stderr)
    assert "Traceback" not in refused.stderr
    with pytest.raises(Unreadable):
        kernel.approve(renamed)
    row = kernel.store.get_approval(renamed)
    assert row["state"] == "pending" and row["answer"] is None  # nothing written
    with trio.fail_after(10):  # both refusals on the record (the CLI's, at a sweep)
        while len(rejected := [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                               and r["phase"] == "rejected"
                               and r["detail"].get("request") == renamed]) < 2:
            await trio.sleep(0.05)
    assert {r["detail"]["error"] for r in rejected} == {Unreadable.code}
    with trio.fail_after(10):  # (a sweep: its call ends, NotFound)
        while not results:
            await trio.sleep(0.05)
    done = libos(db_path, "approve", neighbour["id"])
    assert done.returncode == 0, done.stderr
    with trio.fail_after(10):
        while len(results) < 2:
            await trio.sleep(0.05)
    assert 1 in results  # the neighbour's write ran


async def test_a_writers_row_named_after_a_whole_id_leaves_that_id_answerable(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """A writer copies a pending request under the request's id and more: the whole id was
    refused by `approve` and `show` as the start of two ids (one listed nowhere), with no more
    of it to give. A whole id names its request alone; a prefix of both is still refused."""
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    with raw(db_path) as db:
        db.execute(f"INSERT INTO approvals (id, {_COLUMNS}) SELECT ?, {_COLUMNS} FROM approvals"
                   " WHERE id = ?", (request["id"] + "\x1b]0;owned\x07", request["id"]))
    prefix = libos(db_path, "approve", request["id"][:12])
    assert prefix.returncode == 2 and "more than one" in prefix.stderr
    assert "\x1b" not in prefix.stderr  # (the writer's id named escaped)
    shown = libos(db_path, "approvals", "show", request["id"])
    assert shown.returncode == 0 and request["digest"] in shown.stdout, shown.stderr
    done = libos(db_path, "approve", request["id"], "--shown", request["digest"])
    assert done.returncode == 0, done.stderr
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.05)
    assert results == [1]
