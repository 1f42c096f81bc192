"""The rooted provider's descriptors, attacked: the broker out of descriptors (EMFILE) while a
process calls every fs syscall, and the root descriptor the provider keeps for openat2 seen
from the children the broker starts (a shell command, a Deno sandbox)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import LibosError
from tests.broker.syscalls.path_attacks import NEIGHBOUR, VARIANTS, RacyFs, Runner, plant


@contextmanager
def no_descriptors_left() -> Iterator[None]:
    """Every descriptor this process may open is taken (a lowered soft limit, filled)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, used + 64), hard))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("fs_walk")
async def test_out_of_descriptors_every_fs_call_is_limit_exceeded_with_its_record(
        tmp_path: Path) -> None:
    tree = plant(tmp_path)
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        paths = {"fs.list": "dir", "fs.chdir": "dir", "fs.mkdir": "dir/new",
                 "fs.remove": "dir/f.txt"}
        seen: dict[str, Any] = {}
        with no_descriptors_left():
            for op, extra in VARIANTS:
                args = {"path": paths.get(op, "dir/f.txt"), **extra}
                before = kernel.store.head_seq
                try:
                    seen[f"{op} {extra}"] = runner.call("main", op, args)
                except LibosError as exc:
                    seen[f"{op} {extra}"] = type(exc).__name__
                    assert runner._audited(before, op, exc.code), (op, extra)
        # Never a wrong answer, never an untyped error: the host's limit, said as a limit.
        assert seen == {f"{op} {extra}": "LimitExceeded" for op, extra in VARIANTS}, seen
        assert (tree.fs_root / "work/pub/dir/f.txt").read_text() == "f"
        assert not (tree.fs_root / "work/pub/dir/new").exists()
        assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
        assert runner.call("main", "fs.write", {"path": "dir/f.txt", "data": "g"}) == 1
        count, problems = kernel.verify_audit()
        assert count > len(VARIANTS) and problems == []
