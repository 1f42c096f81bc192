"""`libos ps` on a long chain: the first run (it walks the whole chain, and keeps the walk:
`broker.store.walk_memory`) against the next (it walks only the records appended since).

A store of `--records` audit records (admin notes beside one live process, whose row makes
ps check the chain), then `libos ps` as a user runs it (a process of its own, interpreter
start included), alternating: the kept walk removed (a first run), then kept (a second), and
a run with no live row for scale (no walk at all: the process killed, in a copy of the store).
Medians of `--repeat` runs each; the machine is shared, so only the ratios mean much.

Measured (2 cores shared with other work, load 16-17; CPU medians, interpreter start
included): 40,000 records, 7 runs: 0.57 s first, 0.30 s second, 0.30 s with no live row
(wall 2.53 / 1.36 / 1.32 s); 200,000 records, 3 runs: 1.69 s first, 0.33 s second, 0.34 s
with no live row. The walk kept of one process: 810 bytes.

With many rows, the drawing was the cost (rich laid the tree and table out cell by cell); past
200 processes ps draws one plain line a process (`broker.render_long`). `--records 1000
--ended 10000 --repeat 3`, load 8: CPU medians 10.0 s first, 10.1 s second, 9.1 s with no
live row before it; 1.81 / 1.40 / 0.82 s after (wall 16.5 / 24.4 / 17.4 -> 2.7 / 2.1 / 1.2 s).

`python -m bench.ps_bench [--records 40000] [--repeat 5] [--ended 0]` (`--ended N`: N ended
processes beside, each a row ps checks against its end: the walk kept grows with them).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from broker import AgentImage, Kernel
from broker.store import AuditRecord
from broker.store.walk_memory import WalkMemory

LIBOS = [sys.executable, "-c", "from broker.cli import entry; raise SystemExit(entry())"]


async def _make(db: Path, records: int, live: bool, ended: int) -> None:
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        for _ in range(ended):  # (each a row ps checks, and its records: the walk kept grows)
            kernel.kill(kernel.spawn("a", caps=["clock:*:read"]))
        pid = kernel.spawn("a", caps=["clock:*:read"])
        for i in range(records):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note",
                                                  detail={"i": i}))
        if not live:
            kernel.kill(pid)


def _ps_seconds(db: Path) -> tuple[float, float]:
    """The wall time and the CPU time (user and system: less moved by the machine's load) of
    one `libos ps`."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([*LIBOS, "ps", "--db", str(db)], check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _kept(db: Path) -> Path:
    path = WalkMemory.path_of(db)
    assert path is not None, "no audit key: nothing is kept"
    return path


def run(records: int = 40_000, repeat: int = 5, ended: int = 0) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        live, idle = Path(tmp, "live.db"), Path(tmp, "idle.db")
        trio.run(_make, live, records, True, ended)
        trio.run(_make, idle, records, False, ended)
        kept = _kept(live)
        first, second, none = [], [], []
        for _ in range(repeat):
            kept.unlink(missing_ok=True)
            first.append(_ps_seconds(live))
            second.append(_ps_seconds(live))
            none.append(_ps_seconds(idle))
        size = kept.stat().st_size
    figures: dict[str, float] = {"records": records, "ended_processes": ended}
    for name, runs in (("first", first), ("second", second), ("no_live_row", none)):
        figures[f"{name}_s"] = statistics.median(wall for wall, _ in runs)
        figures[f"{name}_cpu_s"] = statistics.median(cpu for _, cpu in runs)
    figures["kept_bytes"] = size
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ended", type=int, default=0, help="ended processes beside")
    args = parser.parse_args()
    for name, value in run(args.records, args.repeat, args.ended).items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
