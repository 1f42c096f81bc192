"""The path-attack battery (issue 14, item 8): at least 1,200 attempts across every fs syscall,
played through one kernel; each is a typed refusal with an audit record, the same syscall on
the process's own files still works after it, and nothing outside those files changes.
See `path_attacks.py` for the corpus and what each category tries."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import Conflict, LibosError, NotCapable, NotFound
from tests.broker.syscalls.path_attacks import (
    OPS,
    SECRET,
    RacyFs,
    Runner,
    corpus,
    hardlink_corpus,
    plant,
    plant_hardlinks,
    snapshot,
)

# Both ways the rooted provider opens a checked path (openat2, and the component walk).
pytestmark = pytest.mark.usefixtures("fs_walk")

MIN_ATTEMPTS = 1200


def test_the_corpus_is_large_and_covers_every_fs_syscall_and_category() -> None:
    attempts = corpus()
    assert len(attempts) >= MIN_ATTEMPTS
    assert {a.op for a in attempts} == set(OPS)
    categories = Counter(a.category for a in attempts)
    for category in ("traversal", "proc", "symlink", "symlink loop", "alias", "alias in scope",
                     "nul", "overlong", "rooted", "race"):
        assert categories[category] >= 20, category
    for category in categories:
        assert {a.op for a in attempts if a.category == category} == set(OPS), category


async def test_every_attempt_is_a_typed_refusal_with_an_audit_record(tmp_path: Path) -> None:
    tree = plant(tmp_path)
    before = snapshot(tree)
    fs = RacyFs(tree.fs_root)
    attempts = corpus()
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        start = time.perf_counter()
        for attempt in attempts:
            runner.play(attempt)
        elapsed = time.perf_counter() - start
        assert runner.failures == [], "\n".join(runner.failures[:40])
        assert runner.refused == len(attempts)
        assert kernel.verify_audit()[1] == []
    assert snapshot(tree) == before
    print(f"\n{len(attempts)} path attacks refused and audited in {elapsed:.2f} s")


async def test_a_refusal_tells_nothing_of_what_lies_beyond_a_link(tmp_path: Path) -> None:
    """Through a link that leads out of the scope, a name under a file, under a directory and
    under nothing are refused alike: the refusal is no oracle for what exists out there."""
    tree = plant(tmp_path)
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        for op in ("fs.read", "fs.stat", "fs.write", "fs.mkdir"):
            seen = set()
            for beyond in ("key/x", "sub/x", "nothing/x"):
                args = {"path": f"links/secret_dir/{beyond}", "data": "x"} if op == "fs.write" \
                    else {"path": f"links/secret_dir/{beyond}"}
                with pytest.raises(NotCapable) as refused:
                    runner.call("main", op, args)
                seen.add(refused.value.message.replace(beyond, "…"))
            assert len(seen) == 1, seen


async def test_hardlinked_files_are_refused_for_read_and_write(tmp_path: Path) -> None:
    """A hardlink inside the scope to a denied file, a file outside the scope and a file
    outside the broker's tree (planted, or swapped in after the check) is refused."""
    tree = plant(tmp_path)
    plant_hardlinks(tree)
    before = snapshot(tree)
    fs = RacyFs(tree.fs_root)
    attempts = hardlink_corpus()
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        for attempt in attempts:
            runner.play(attempt)
        assert runner.failures == [], "\n".join(runner.failures[:40])
        assert runner.refused == len(attempts)
    assert snapshot(tree) == before


async def test_a_directory_flipping_under_concurrent_reads_never_leaks(tmp_path: Path) -> None:
    """A real race, not a staged one: a thread flips a directory on the path between itself
    and a symlink to the secret directory as fast as it can, while the process reads through
    it. Every read is the process's own file or a typed error, audited; never the secret."""
    tree = plant(tmp_path)
    (tree.fs_root / "work/secret/f.txt").write_bytes(SECRET)
    fs = RacyFs(tree.fs_root)
    race_dir = tree.fs_root / "work/pub/race/dir"
    aside = race_dir.with_name("dir.real")
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(race_dir, aside)
            os.symlink("../../../secret", race_dir)
            time.sleep(0.0002)  # a window for reads each way, even on a loaded machine
            os.unlink(race_dir)
            os.rename(aside, race_dir)
            stop.wait(0.0005)

    seen: Counter[str] = Counter()
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        try:
            for _ in range(600):
                before = kernel.store.head_seq
                try:
                    got = runner.call("main", "fs.read", {"path": "race/dir/f.txt",
                                                          "binary": True})
                except (Conflict, NotFound) as exc:
                    seen[type(exc).__name__] += 1
                    assert runner._audited(before, "fs.read", exc.code)
                except LibosError as exc:  # a refusal at the check: the swap was seen there
                    seen[type(exc).__name__] += 1
                    assert runner._audited(before, "fs.read", exc.code)
                else:
                    assert got == b"race", got
                    seen["read"] += 1
        finally:
            stop.set()
            flipper.join()
    assert sum(seen.values()) == 600 and seen["read"] > 0
    print(f"\nconcurrent flips: {dict(seen)}")


@pytest.mark.parametrize("swap", ["removed", "file", "dir"])
async def test_a_link_changed_while_it_is_resolved_is_a_typed_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str) -> None:
    """The link a resolution has just seen (lstat) is gone, or is something else, when it
    reads its target (readlink): the answer is about what is there now (a typed error with
    its audit record, or the new file's own content), never an untyped failure."""
    tree = plant(tmp_path)
    link = tree.fs_root / "work/pub/swapped"
    os.symlink("../secret/key", link)
    fs = RacyFs(tree.fs_root)
    readlink = os.readlink

    def swap_then_readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
        # (the walk names it from the root's descriptor: "work/pub/swapped", dir_fd=root)
        named = os.fspath(path)
        if kwargs.get("dir_fd") is not None:
            named = os.path.join(readlink(f"/proc/self/fd/{kwargs['dir_fd']}"), named)
        if named == str(link) and os.path.islink(link):
            os.unlink(link)
            if swap == "file":
                link.write_bytes(b"mine")
            elif swap == "dir":
                link.mkdir()
        return readlink(path, *args, **kwargs)

    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        monkeypatch.setattr(os, "readlink", swap_then_readlink)
        before = kernel.store.head_seq
        try:
            got = runner.call("main", "fs.read", {"path": "swapped", "binary": True})
        except LibosError as exc:
            assert swap != "file" and runner._audited(before, "fs.read", exc.code), exc
        else:
            assert swap == "file" and got == b"mine"
        monkeypatch.undo()
        assert runner.call("main", "fs.read", {"path": "ok.txt"}) == "neighbour"
    assert (tree.fs_root / "work/secret/key").read_bytes() == SECRET
