"""A pending request's row that a database writer deletes, or renames (an id not of the
broker's form is listed nowhere: red team 38), leaves its call waiting on nothing: the
broker's sweep used to look for rows settled elsewhere only in shared mode, so a single
broker's call hung past its deadline for good. Now the call ends at the next sweep, typed
(`NotFound`) and recorded; the neighbour request is answered as ever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.errors import NotFound
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.store.conftest import raw

GONE, KEPT = "/out/gone.txt", "/out/kept.txt"
_WRITERS = {"deleted": ("DELETE FROM approvals WHERE id = ?", lambda rid: ()),
            "renamed": ("UPDATE approvals SET id = ? WHERE id = ?",
                        lambda rid: (rid + "$(touch x)",))}


async def row_gone_under_a_call(kernel: Kernel, pid: int, gone: Callable[[str], None],
                                after: Callable[[str], None] | None = None
                                ) -> tuple[str, dict[str, Any]]:
    """Two calls ask (writing `GONE` and `KEPT`); `gone` (a writer's doing) takes the first's
    row away, its call must end at the next sweep, not at its deadline; then `after` runs
    and the second is approved. Returns the first's id and the calls' outcomes."""
    outcomes: dict[str, Any] = {}

    async def call(path: str) -> None:
        try:
            outcomes[path] = await kernel.call_tool(pid, "write_file",
                                                    {"path": path, "data": "x"})
        except NotFound as exc:
            outcomes[path] = exc

    async with trio.open_nursery() as nursery:
        for path in (GONE, KEPT):
            nursery.start_soon(call, path)
        with trio.fail_after(30):
            while len(kernel.approvals()) < 2:
                await trio.sleep(0.01)
        ids = {r["args"]["path"]: r["id"] for r in kernel.approvals()}
        gone(ids[GONE])
        with trio.fail_after(10):  # (a sweep, not the deadline)
            while GONE not in outcomes:
                await trio.sleep(0.05)
        if after is not None:
            after(ids[GONE])
        kernel.approve(ids[KEPT])
    assert isinstance(outcomes[GONE], NotFound) and outcomes[KEPT] == 1  # (the neighbour)
    return ids[GONE], outcomes


@pytest.mark.parametrize("writer", sorted(_WRITERS))
async def test_a_call_whose_request_row_is_gone_ends_typed_and_recorded(
        db_path: Path, tmp_path: Path, writer: str) -> None:
    async with Kernel.open(db_path, fs_root=tmp_path / "fs", approval_timeout=300) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        sql, extra = _WRITERS[writer]

        def gone(rid: str) -> None:
            with raw(db_path) as db:
                db.execute(sql, (*extra(rid), rid))

        await row_gone_under_a_call(kernel, pid, gone)
        assert not Path(kernel.fs.root, "out/gone.txt").exists()  # type: ignore[attr-defined]
        ends = [r["detail"].get("error") for r in kernel.audit(pid)
                if r["syscall"] == "tool.call" and "outcome" in r["phase"]]
        assert "NOT_FOUND" in ends


async def test_the_look_for_rows_gone_takes_more_waiting_calls_than_a_statement_names(
        store_at: Path | str, tmp_path: Path) -> None:
    """The sweep names every waiting call's request in its look-up: past PostgreSQL's 65,535
    parameters in one statement it failed (the sweep's task with it); it looks in chunks."""
    async with Kernel.open(store_at, fs_root=tmp_path / "fs", approval_timeout=300) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        results: list[Any] = []

        async def call() -> None:
            results.append(await kernel.call_tool(pid, "write_file", {"path": KEPT, "data": "x"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(30):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [request] = kernel.approvals()
            gone = [f"apr_{n:024x}" for n in range(70_000)]
            assert kernel.store.settled_approvals([*gone, request["id"]]) == gone
            kernel.approve(request["id"])
        assert results == [1]
