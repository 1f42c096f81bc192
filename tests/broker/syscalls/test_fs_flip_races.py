"""A thread flips a directory of the process's scope to a symlink (to a directory outside the
scope, to one a deny rule protects, to the host) and back, as fast as it can, while the
process writes, appends, stats, lists, makes and removes there: every syscall, not only
reads. Each call acts on the process's own directory or fails with a typed error and its
audit record; nothing outside the scope is ever read, made, changed or removed."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import LibosError
from tests.broker.syscalls.path_attacks import (
    HOST,
    NEIGHBOUR,
    PRIVATE,
    SECRET,
    RacyFs,
    Runner,
    plant,
    snapshot,
)
from tests.broker.syscalls.test_fs_open_attacks import FLIPS, no_hang

pytestmark = pytest.mark.usefixtures("fs_walk")

# (syscall, arguments): what the process does in race/dir while it flips.
CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fs.write", {"path": "race/dir/f.txt", "data": "race"}),
    ("fs.write", {"path": "race/dir/f.txt", "data": "", "append": True}),
    ("fs.write", {"path": "race/dir/made.txt", "data": "made", "exclusive": True}),
    ("fs.remove", {"path": "race/dir/made.txt"}),
    ("fs.mkdir", {"path": "race/dir/newdir"}),
    ("fs.remove", {"path": "race/dir/newdir", "recursive": True}),
    ("fs.stat", {"path": "race/dir/f.txt"}),
    ("fs.list", {"path": "race/dir"}),
    ("fs.list", {"path": "race/dir/sub"}),
    ("fs.read", {"path": "race/dir/f.txt", "binary": True}),
)
FOREIGN = (SECRET, PRIVATE, HOST)


@pytest.mark.parametrize("flip", sorted(f for f in FLIPS if f.startswith("dir to")))
async def test_every_fs_call_under_a_flipping_directory_stays_in_scope(
        tmp_path: Path, flip: str) -> None:
    tree = plant(tmp_path)
    # Beside each target, what the process's own directory holds: names a flip could make
    # the call reach instead.
    for where in ("work/secret", "work/pub/private", "../outside/dir"):
        base = tree.fs_root / where
        (base / "f.txt").write_bytes(FOREIGN[0] if "secret" in where else FOREIGN[1])
        (base / "made.txt").write_bytes(b"theirs")
        (base / "newdir").mkdir(exist_ok=True)
        (base / "newdir/keep").write_bytes(b"theirs")
        (base / "sub").mkdir(exist_ok=True)
        (base / "sub/theirs.txt").write_bytes(b"theirs")
    flip_dir = next(FLIPS[f] for f in FLIPS if f == flip)
    step = flip_dir(tree.fs_root / "work/pub")
    own = {"work/pub/race/dir", "work/pub/race/dir.real"}
    untouched = {k: v for k, v in snapshot(tree).items()
                 if not any(k == f"fs/{o}" or k.startswith(f"fs/{o}/") for o in own)}
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            step()
            stop.wait(0.0003)

    seen: Counter[str] = Counter()
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        thread = threading.Thread(target=flipper, daemon=True)
        thread.start()
        try:
            for _ in range(40):
                for op, args in CALLS:
                    before = kernel.store.head_seq
                    try:
                        with no_hang():
                            got = runner.call("main", op, args)
                    except LibosError as exc:
                        seen[f"{op} {type(exc).__name__}"] += 1
                        assert runner._audited(before, op, exc.code), (op, args, exc)
                        continue
                    seen[f"{op} ok"] += 1
                    if op == "fs.read":
                        assert got not in FOREIGN, got
                    if op == "fs.list":
                        names = {e["name"] for e in got}
                        assert "theirs.txt" not in names and "keep" not in names, (args, got)
                        # (their f.txt and made.txt differ in size from ours: 4 bytes)
                        assert all(e["size"] == 4 for e in got
                                   if e["name"] in ("f.txt", "made.txt")), got
                    if op == "fs.stat":
                        assert (got["type"], got["size"]) == ("file", 4), got
        finally:
            stop.set()
            thread.join()
        assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
        count, problems = kernel.verify_audit()
        assert count > len(CALLS) * 40 and problems == []
    # Every file and directory outside the process's own directory is as it was.
    after = {k: v for k, v in snapshot(tree).items()
             if not any(k == f"fs/{o}" or k.startswith(f"fs/{o}/") for o in own)}
    assert after == untouched
    assert seen["fs.write ok"] > 0 and sum(v for k, v in seen.items() if "ok" not in k) > 0, seen
    print(f"\n{flip}: {dict(seen)}")
