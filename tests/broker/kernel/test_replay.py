"""Replay a tool run from its audit: recorded results are fed back, nothing is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel, NotFound
from tests.conftest import open_image


def _last_call(kernel: Kernel, pid: int) -> int:
    return [r["seq"] for r in kernel.audit(pid)
            if r["syscall"] == "tool.call"
            and r["phase"] in ("intent", "intent+outcome")][-1]  # (whole: no effect)


async def test_replay_feeds_back_recorded_results_without_touching_the_world(
        kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/**:read,write"])
    note = Path(kernel.fs.root) / "note.txt"  # type: ignore[attr-defined]
    note.write_text("as it was")
    assert await kernel.call_tool(pid, "read_file", {"path": "/note.txt"}) == "as it was"
    inv = _last_call(kernel, pid)
    note.write_text("changed since")
    before = len(kernel.audit())
    replayed = await kernel.replay(inv)
    assert replayed["same"] is True and replayed["replayed"]["value"] == "as it was"
    assert replayed["syscalls"] == 1 and replayed["tool"] == "read_file"
    assert len(kernel.audit()) == before  # the replay made no syscall of its own


async def test_replay_of_a_failed_run_ends_in_the_same_error(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/a/**:read"])
    with pytest.raises(Exception):  # noqa: B017
        await kernel.call_tool(pid, "read_file", {"path": "/b/secret"})
    replayed = await kernel.replay(_last_call(kernel, pid))
    assert replayed["same"] is True
    assert replayed["replayed"] == {"ok": False, "code": "NOT_CAPABLE",
                                    "message": replayed["replayed"]["message"]}


async def test_a_write_is_not_repeated_by_replay(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/**:read,write"])
    await kernel.call_tool(pid, "write_file", {"path": "/out.txt", "data": "once"})
    (Path(kernel.fs.root) / "out.txt").unlink()  # type: ignore[attr-defined]
    replayed = await kernel.replay(_last_call(kernel, pid))
    assert replayed["same"] is True and replayed["replayed"]["value"] == 4
    assert not (Path(kernel.fs.root) / "out.txt").exists()  # type: ignore[attr-defined]


async def test_replay_refuses_what_is_not_a_recorded_invocation(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    kernel.dispatcher.run_now(kernel.process(pid), None, "clock.now", {})  # (no tool's)
    inner = next(r["seq"] for r in kernel.audit(pid) if r["syscall"] == "clock.now")
    with pytest.raises(NotFound):
        await kernel.replay(inner)
    await kernel.call_tool(pid, "now", {})  # its read is listed under the call's own seq
    folded = [r for r in kernel.audit(pid) if r["syscall"] == "clock.now"][-1]
    assert folded["folded"] and (await kernel.replay(folded["seq"]))["same"]
    with pytest.raises(NotFound):
        await kernel.replay(10_000)


async def test_replay_detects_divergence(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    await kernel.call_tool(pid, "now", {})
    inv = _last_call(kernel, pid)
    # Tamper with what the run was recorded to have asked (its read, folded into the call's
    # record): the replay must notice.
    kernel.store._db.execute("UPDATE audit SET detail=replace(detail, ?, ?) WHERE seq=?",
                             ('"args_hash":"', '"args_hash":"x', inv))
    with pytest.raises(Conflict):
        await kernel.replay(inv)


async def test_a_tampered_result_is_refused(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    await kernel.call_tool(pid, "now", {})
    inv = _last_call(kernel, pid)
    kernel.store._db.execute(  # (the call's own: its read's result is folded into it)
        "UPDATE audit SET payload=? WHERE seq=? AND phase='intent+outcome'",
        (b"\xcb" + b"\0" * 8, inv))
    with pytest.raises(Conflict):
        await kernel.replay(inv)
