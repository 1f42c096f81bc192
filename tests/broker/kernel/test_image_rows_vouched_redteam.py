"""Red team: a stored image (an `images` row) edited behind the chain's back is refused when
it is loaded, not only by `libos audit --verify` (invariant 15). The host registers an image
with a deny rule and runs a process on it; then, with the broker stopped, a database writer
drops the deny rule (or adds a tool to it, or edits the row and the digest its `host.image`
record carries; a planted newer version: test_image_planted_redteam.py). At the next open
recovery ends the live process on it (killed, recorded) instead of failing the open; a host
spawn, a child's spawn and an exec of it fail `Tampered` (a `Conflict`) with an
`audit.anchor` record naming it, once; a genuine neighbour image still spawns and execs.
Both backends."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, Kernel
from broker.store.opening import open_store
from broker.store.vouch import Tampered, spec_digest
from tests.conftest import open_image

DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
NEEDS = ("fs:/data/**:read",)
PARENT = ("fs:/data/**:read", "proc:*:spawn,exec")


def _sql(store: Path | str, sql: str, values: tuple[Any, ...] = ()) -> list[Any]:
    s = open_store(store)
    try:
        with s.transaction() as db:
            return list(db.execute(sql, values).fetchall())
    finally:
        s.close()


def _row(store: Path | str) -> dict[str, Any]:
    [(spec,)] = _sql(store, "SELECT spec FROM images WHERE name='target'")
    return dict(json.loads(spec))


def _rewrite(store: Path | str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = _row(store)
    change(spec)
    _sql(store, "UPDATE images SET spec=? WHERE name='target'", (json.dumps(spec),))
    return spec


def _edit_record_too(store: Path | str) -> None:
    """The row's deny rule dropped, and its record made to carry the edited row's digest
    (its own hash left as it was: the record no longer matches it)."""
    spec = _rewrite(store, lambda s: s.update(denies=[]))
    [(seq, detail)] = _sql(store, "SELECT seq, detail FROM audit WHERE syscall='host.image'"
                                  " AND resource='target:1'")
    detail = json.loads(detail)
    detail["spec"]["sha256"] = spec_digest(spec)
    _sql(store, "UPDATE audit SET detail=? WHERE seq=?", (json.dumps(detail), seq))


ATTACKS: dict[str, tuple[Callable[[Path | str], Any], str, str]] = {
    "deny-dropped": (lambda s: _rewrite(s, lambda spec: spec.update(denies=[])), "1",
                     "is stored otherwise than it was registered"),
    "tool-added": (lambda s: _rewrite(s, lambda spec: spec["tools"].append("write_file")),
                   "1", "is stored otherwise than it was registered"),
    "record-edited": (_edit_record_too, "1", "does not match its hash: edited"),
}


def _anchors(kernel: Kernel) -> list[str]:
    return [str(r["detail"]["problem"]) for r in kernel.audit()
            if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_tampered_image_is_refused_at_load(store_at: Path | str, tmp_path: Path,
                                                   attack: str) -> None:
    edit, version, problem = ATTACKS[attack]
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "target", needs=NEEDS, tools=("read_file",), denies=(DENY,))
        await open_image(kernel, "neighbour", needs=NEEDS, tools=("read_file",))
        await open_image(kernel, "parent", needs=PARENT, tools=("spawn", "exec"))
        running = kernel.spawn("target", caps=["fs:/data/**:read"])
        parent = kernel.spawn("parent", caps=list(PARENT))
        assert kernel.verify_audit()[1] == []
    edit(store_at)

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        # Recovery did not run it: ended, recorded; the open went on (its neighbour is live).
        status = kernel.store.get_process(running)
        ended = [a for a in _anchors(kernel) if a.startswith(f"process {running} ended")]
        assert status["state"] == "killed" and problem in status["reason"]
        assert len(ended) == 1 and problem in ended[0]
        assert kernel.store.get_process(parent)["state"] == "runnable"
        # Its host can still read how it ended (its image is not loaded for that).
        waited = await kernel.wait(running)
        assert waited["state"] == "killed" and problem in waited["reason"]
        assert kernel.process_info(running)["state"] == "killed"

        with pytest.raises(Tampered, match=problem):
            kernel.spawn("target", caps=["fs:/data/**:read"])
        with pytest.raises(Conflict, match=problem):
            await kernel.call_tool(parent, "spawn", {"image": "target",
                                                     "caps": ["fs:/data/**:read"]})
        with pytest.raises(Conflict, match=problem):
            await kernel.call_tool(parent, "exec", {"image": "target"})
        noted = [a for a in _anchors(kernel) if f"image target:{version}" in a
                 and not a.startswith("process ")]
        assert len(noted) == 1 and problem in noted[0]  # once per image per kernel

        # The genuine neighbour still spawns, as a child too, and execs.
        kernel.spawn("neighbour", caps=["fs:/data/**:read"])
        await kernel.call_tool(parent, "spawn", {"image": "neighbour",
                                                 "caps": ["fs:/data/**:read"]})
        done = await kernel.call_tool(parent, "exec", {"image": "neighbour"})
        assert done["to"] == "neighbour:1"
