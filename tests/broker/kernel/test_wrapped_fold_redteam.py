"""Red team: a builtin's read is folded into its call's record only when the fold says all
the read's own record said. `fs.list` notes in its record the names on the host that are not
text (left out of the listing: `unnamed`); the fold carries no such key, so a listing with
such names keeps its read's record of its own (as before the fold), and a clean listing is
still folded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from broker import Kernel
from tests.conftest import open_image

READ = {"kind": "fs", "scope": "/data/**", "rights": ["read"]}


def _lists(kernel: Kernel, pid: int, after: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["seq"] > after and r["syscall"] == "fs.list"]


async def test_a_listing_that_left_names_out_keeps_its_own_record(kernel: Kernel) -> None:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    for folder in ("odd", "plain"):
        (root / "data" / folder).mkdir(parents=True)
        (root / "data" / folder / "ok.txt").write_text("x")
    os.close(os.open(os.fsencode(root / "data" / "odd") + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY))
    await open_image(kernel, needs=("fs:/**:read",), tools=("list_dir",))
    pid = kernel.spawn("agent", caps=[READ])
    before = kernel.store.head_seq
    listed = await kernel.call_tool(pid, "list_dir", {"path": "/data/odd"})
    assert [e["name"] for e in listed] == ["ok.txt"]  # the name that is not text: left out
    [read] = _lists(kernel, pid, before)
    assert read["detail"].get("unnamed") == 1, read  # the record still says one was
    assert "folded" not in read  # a record of its own
    assert kernel.verify_audit()[1] == []
    # The neighbour: a listing that left nothing out is folded into its call's one record.
    before = kernel.store.head_seq
    assert [e["name"] for e in await kernel.call_tool(pid, "list_dir", {"path": "/data/plain"})
            ] == ["ok.txt"]
    [read] = _lists(kernel, pid, before)
    assert read.get("folded") is True and "unnamed" not in read["detail"]
    assert len(list(kernel.store.audit_records(pid=pid, after=before))) == 1
