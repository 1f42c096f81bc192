"""Instructions per warm audited `fs.read` and per `call_tool("read_file")`, kernel-only, under
callgrind: repeatable on a loaded machine, unlike time. Only the measured loop is counted
(`--dump-before=getppid` splits the profile at the two marks around it).

    python -m bench.readpath_callgrind            # both figures, this tree
    python -m bench.readpath_callgrind --loop read 300   # the loop alone (what valgrind runs)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import trio

from bench.callgrind import instructions as profiled
from bench.kernel_bench import CONTENT
from broker import AgentImage, Kernel

WARM = 200


async def loop(mode: str, n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="libos-cg-") as tmp:
        async with Kernel.open(Path(tmp) / "k.db") as kernel:
            await kernel.register_image(AgentImage(
                "bench", tools=("read_file",), needs=("fs:/data/**:read",)))
            pid = kernel.spawn("bench", caps=["fs:/data/**:read"])
            host_file = Path(kernel.fs.root, "data", "small.txt")  # type: ignore[attr-defined]
            host_file.parent.mkdir()
            host_file.write_text(CONTENT)
            proc, args = kernel.process(pid), {"path": "/data/small.txt"}
            run_now = kernel.dispatcher.run_now
            for _ in range(WARM):
                run_now(proc, None, "fs.read", args)
                await kernel.call_tool(pid, "read_file", args)
            os.getppid()  # the mark before the loop
            if mode == "read":
                for _ in range(n):
                    run_now(proc, None, "fs.read", args)
            else:
                for _ in range(n):
                    await kernel.call_tool(pid, "read_file", args)
            os.getppid()  # and after it


def instructions(mode: str, n: int = 300) -> int:
    """Instructions per call of the loop alone."""
    return profiled("bench.readpath_callgrind", ["--loop", mode, str(n)], per=n)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loop"]:
        trio.run(loop, sys.argv[2], int(sys.argv[3]))
    else:
        for mode in ("read", "tool"):
            print(f"{mode:5} {instructions(mode):>9,} instructions per call")
