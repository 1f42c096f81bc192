"""Run inside a user and mount namespace of its own (`unshare -rm`, see test_fs_mounts.py): a
real procfs and a directory from outside the tree are bind-mounted inside the fs root, then a
process with the usual scope (/work/pub/**, minus /work/pub/private/**) tries to reach the
secret through the magic links of that procfs and across the mounts. Prints one JSON line:
{attempt: error name or what it read}."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio


async def main(tmp: Path, way: str) -> dict[str, str]:
    from broker import Kernel
    from broker.errors import LibosError
    from broker.providers import beneath
    from tests.broker.syscalls.path_attacks import RacyFs, Runner, plant

    if way == "walk":
        beneath.usable = lambda: False  # type: ignore[assignment]
    tree = plant(tmp)
    pub = tree.fs_root / "work/pub"
    for name, source in (("proc", "/proc"), ("outside", str(tree.outside))):
        (pub / name).mkdir()
        subprocess.run(["mount", "--rbind", source, str(pub / name)], check=True)
    fs = RacyFs(tree.fs_root)
    results: dict[str, str] = {"way": "openat2" if fs._root_fd is not None else "walk"}
    me = os.getpid()
    secret_fd = os.open(tree.fs_root / "work/secret/key", os.O_RDONLY)
    async with Kernel.open(tmp / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        root_fd = fs._root_fd if fs._root_fd is not None else secret_fd
        attempts = [
            f"proc/{me}/root/etc/passwd", "proc/self/root/etc/passwd",
            f"proc/{me}/cwd", f"proc/{me}/fd/{secret_fd}",
            f"proc/{me}/fd/{root_fd}/work/secret/key", f"proc/{me}/fd/{root_fd}",
            f"proc/{me}/exe", f"proc/{me}/task/{me}/root/etc/passwd",
            f"proc/{me}/map_files/{sorted(os.listdir(f'/proc/{me}/map_files'))[0]}",
            "proc/thread-self/root/etc/passwd",
        ]
        for path in attempts:
            for op, extra in (("fs.read", {"binary": True}), ("fs.stat", {}), ("fs.list", {}),
                              ("fs.write", {"data": "x"})):
                before = kernel.store.head_seq
                key = f"{op} {path}"
                try:
                    got = runner.call("main", op, {"path": path, **extra})
                    results[key] = "read:" + repr(got)[:60]
                except LibosError as exc:
                    audited = runner._audited(before, op, exc.code)
                    results[key] = type(exc).__name__ + ("" if audited else " (no record)")
        # Across a mount the host made inside the tree: acted on, as any directory of it.
        results["outside mount"] = runner.call("main", "fs.read", {"path": "outside/host.txt"})
        results["neighbour"] = runner.call("main", "fs.read", {"path": "ok.txt"})
    return results


if __name__ == "__main__":
    # (in the test's own directory: the mounts end with this namespace, and the test's
    # tmp_path is removed after, from outside it)
    print(json.dumps(trio.run(main, Path(tempfile.mkdtemp(dir=sys.argv[2])), sys.argv[1])))
