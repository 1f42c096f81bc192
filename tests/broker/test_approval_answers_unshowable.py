"""An answer to a request no surface shows is refused before anything is written (red team
42, attacking lane rspeople's fixes).

1. LOW: a request a database writer edited into a shape no surface shows (a deadline past any
   date, arguments that do not give their hash, a resource or scope of bytes) is listed
   nowhere and `approvals show` refuses it, but `libos approve ID` (and the kernel's
   `approve`) checked only after writing: the answer was written, signed with the user's key
   and applied (the call ran, the file was written) while the person was told `CONFLICT ...
   edited in the database`, or `INTERNAL` (a TypeError of a text deadline, a ValueError
   signing a scope of bytes). Now such a request is answered by nobody, typed, before
   anything is written, the refusal kept for the broker to audit; the neighbour is answered.
2. LOW: a question whose row holds no `text` failed `libos approvals` (and `--json`) for
   every request: `INTERNAL: KeyError: 'text'`. Now it is listed with an empty question."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.errors import Conflict
from tests.broker.kernel.test_approvals import ASK_WRITE, NEEDS, _collect, _pending, _proc
from tests.broker.kernel.test_signed_answers_redteam21 import _write
from tests.broker.test_cli_approvals import _ask, libos
from tests.conftest import ALL_BUILTINS, open_image

EDITS = {
    "deadline past any date": ({"deadline": 1e20}, "deadline is not a time"),
    "deadline of text": ({"deadline": "tomorrow"}, "deadline is not a time"),
    "arguments not giving their hash": ({"args": '{"path": "/out/a.txt"}'},
                                        "do not give its hash"),
    "scope of bytes": ({"cap_scope": b"/out/**"}, "not of its types"),
}


async def _rejected(kernel: Kernel, approval_id: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while not (found := [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                             and r["phase"] == "rejected"
                             and r["detail"].get("request") == approval_id]):
            kernel.queue.sweep()
            await trio.sleep(0.05)
    return found[-1]


@pytest.mark.parametrize("edit", EDITS)
async def test_an_answer_to_a_request_no_surface_shows_is_written_by_nobody(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery, edit: str) -> None:
    fields, refusal = EDITS[edit]
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="x")
    neighbour = await _ask(kernel, nursery, pid, results, path="/out/b.txt", data="y")
    _write(db_path, request["id"], fields)
    for answer in (("approve",), ("approve", "--always"), ("deny",)):
        told = libos(db_path, *answer, request["id"])
        assert told.returncode == 2 and refusal in told.stderr, (answer, told.stderr)
        assert "INTERNAL" not in told.stderr
    with pytest.raises(Conflict, match=refusal):  # the kernel's own front end, too
        kernel.approve(request["id"])
    record = await _rejected(kernel, request["id"])
    assert refusal in record["detail"]["message"]
    row = kernel.store.get_approval(request["id"])
    assert (row["state"], row["answer"], row["sig"]) == ("pending", None, None)
    # The neighbour is answered; the edited request's call never ran.
    assert libos(db_path, "approve", neighbour["id"]).returncode == 0
    with trio.fail_after(10):
        while not results:
            kernel.queue.sweep()
            await trio.sleep(0.05)
    await trio.sleep(0.3)
    kernel.queue.sweep()
    assert results == [1]
    assert not Path(kernel.fs.root, "out", "a.txt").exists()  # type: ignore[attr-defined]
    assert Path(kernel.fs.root, "out", "b.txt").read_text() == "y"  # type: ignore[attr-defined]


async def test_a_question_with_no_text_leaves_the_listing(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "ask_human"))
    pid = kernel.spawn("agent", caps=["human:operator:ask"])
    nursery.start_soon(_collect, [], kernel.call_tool(
        pid, "ask_human", {"question": "Which?", "choices": ["a", "b"]}))
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "ask_human", {"question": "Why?"}))
    asked = {r["question"]["text"]: r for r in await _pending(kernel, 2)}
    request, neighbour = asked["Which?"], asked["Why?"]
    _write(db_path, request["id"], {"question": '{"choices": ["a", "b"]}'})
    for listing in (("approvals",), ("approvals", "--all"), ("approvals", "--json")):
        table = libos(db_path, *listing)
        assert table.returncode == 0, (listing, table.stdout, table.stderr)
        assert neighbour["id"] in table.stdout and request["id"] in table.stdout
    assert libos(db_path, "answer", neighbour["id"], "because").returncode == 0
    with trio.fail_after(10):
        while not results:
            kernel.queue.sweep()
            await trio.sleep(0.05)
    assert results == ["because"]
