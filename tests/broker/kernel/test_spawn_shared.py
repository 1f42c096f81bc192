"""What a spawn makes and writes per process. The processes of an image share one
`AgentImage` (built once from its vouched spec), not a copy each built at its spawn; sharing it
skips no check: a row edited behind the chain's back while the broker runs (after spawns
shared the image) is refused at the next load, and recorded, while a genuine neighbour image
still spawns. A spawn's events are stored by one write. Both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.store.vouch import Tampered
from tests.conftest import open_image

NEEDS = ("clock:*:read",)
DENY = {"kind": "clock", "scope": "*", "rights": ["sleep"], "effect": "deny"}


async def test_spawns_of_an_image_share_it(store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "shared", needs=NEEDS, tools=("now",))
        a, b = (kernel.spawn("shared", caps=list(NEEDS)) for _ in range(2))
        assert kernel.process(a).image is kernel.process(b).image
        await open_image(kernel, "other", needs=NEEDS, tools=("now",))
        other = kernel.spawn("other", caps=list(NEEDS))
        assert kernel.process(other).image is not kernel.process(a).image
        assert kernel.process(other).image.name == "other"


async def test_a_row_edited_after_sharing_is_refused(store_at: Path | str,
                                                     tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "target", needs=NEEDS, tools=("now",), denies=(DENY,))
        await open_image(kernel, "neighbour", needs=NEEDS, tools=("now",))
        first = kernel.spawn("target", caps=list(NEEDS))
        kernel.spawn("target", caps=list(NEEDS))  # (loaded again: the shared one)
        # A database writer drops the image's deny rule, the broker running.
        with kernel.store.transaction() as db:
            [(spec,)] = db.execute("SELECT spec FROM images WHERE name='target'").fetchall()
            edited = dict(json.loads(spec), denies=[])
            db.execute("UPDATE images SET spec=? WHERE name='target'", (json.dumps(edited),))
        with pytest.raises(Tampered, match="stored otherwise than it was registered"):
            kernel.spawn("target", caps=list(NEEDS))
        problems = [str(r["detail"].get("problem")) for r in kernel.audit()
                    if r["syscall"] == "audit.anchor"]
        assert any("image target:1" in p for p in problems)
        # The process spawned before the edit keeps the image it was given (the deny rule).
        assert kernel.process(first).image.denies
        assert kernel.process(kernel.spawn("neighbour", caps=list(NEEDS))).image.name == \
            "neighbour"


async def test_a_spawn_stores_its_events_in_one_write(store_at: Path | str,
                                                      tmp_path: Path) -> None:
    """Its `spawn` event and its move to runnable (and to paused, a child of a held
    parent) are stored together, in that order, by one write after its grants' commit."""
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "shared", needs=("clock:*:read", "proc:*:spawn"),
                         tools=("now", "spawn"))
        writes: list[list[tuple[object, ...]]] = []
        append = kernel.store.append_events

        def counted(rows: list[tuple[object, ...]]) -> list[int | None]:
            writes.append([(pid, kind) for pid, kind, _ in rows])
            return append(rows)  # type: ignore[arg-type]

        kernel.store.append_events = counted  # type: ignore[method-assign]
        pid = kernel.spawn("shared", caps=["clock:*:read", "proc:*:spawn"])
        assert writes == [[(pid, "spawn"), (pid, "state")]]
        kernel.pause(pid)
        writes.clear()
        child = (await kernel.call_tool(pid, "spawn", {"image": "shared",
                                                       "caps": ["clock:*:read"]}))
        child_pid = child["pid"] if isinstance(child, dict) else child
        assert [(pid_, kind) for write in writes for pid_, kind in write
                if pid_ == child_pid] == [(child_pid, "spawn"), (child_pid, "state"),
                                          (child_pid, "state")]
        assert len([w for w in writes if any(p == child_pid for p, _ in w)]) == 1
        states = [e["data"]["new"] for e in kernel.store.events(pid=child_pid)
                  if e["kind"] == "state"]
        assert states == ["runnable", "paused"]
        assert kernel.process_info(child_pid)["state"] == "paused"
