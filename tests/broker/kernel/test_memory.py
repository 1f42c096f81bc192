"""Memory does not grow with history: a real broker process reading an 8 MiB file step after
step keeps its RSS flat, and a broker opening a store with such a process (live, paused)
costs no more than opening an empty one. `bench/memory_bench.py` runs 1,000 steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.broker.kernel.memory_check import ROOT, measure

STEPS = 60  # before the fix: +410 MiB of RSS between step 10 and 60, +490 MiB to open


def test_rss_stays_flat_and_opening_loads_no_history(tmp_path: Path) -> None:
    figures = measure(tmp_path, STEPS)
    print(figures)
    assert figures["growth_mib"] < 64
    assert figures["open_cost_mib"] < 16
    # Stored results are capped like audit payloads: the store does not hold the reads.
    assert figures["store_mib"] < 32


SESSION = """
import resource, sys, trio
from pathlib import Path
from broker import AgentImage, Kernel
from broker.store import AuditRecord
async def main(db, records):
    async with Kernel.open(db) as kernel:
        if records:  # what a long session leaves: a live process's calls, all answered
            await kernel.register_image(AgentImage("w", needs=("clock:*:read",)))
            pid = kernel.spawn("w", caps=["clock:*:read"])
            with kernel.store.audited() as (_, append):
                for _ in range(records // 2):
                    seq = append(AuditRecord("intent", "clock.now", pid=pid,
                                             detail={"args": {}}))
                    append(AuditRecord("outcome", "clock.now", pid=pid, detail={
                        "ok": True, "intent": seq, "result": 1.5e9}))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, flush=True)
trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
"""


def _peak_mib(db: Path, records: int = 0) -> int:
    done = subprocess.run([sys.executable, "-c", SESSION, str(db), str(records)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_opening_after_a_long_session_reads_only_what_is_open(tmp_path: Path) -> None:
    """Recovery looks for intents a crash left open among the records since the last
    opening: it keeps what is open, not every record of the session (150,000 records: +44
    MiB at the opening's peak before, +2 now; the 100,000 here, +29 before: well past the
    bound, at two thirds of the seeding)."""
    _peak_mib(tmp_path / "long.db", 100_000)
    opened = _peak_mib(tmp_path / "long.db")
    empty = _peak_mib(tmp_path / "empty.db")
    assert opened - empty < 16, (opened, empty)



ENDED = """
import resource, sys, trio
from pathlib import Path
from broker import AgentImage, Kernel
async def main(db, ended):
    async with Kernel.open(db) as kernel:
        if ended:  # a long-lived store: many processes came and went; one lives on
            await kernel.register_image(AgentImage("w", needs=("fs:/**:read",)))
            for _ in range(ended):
                kernel.kill(kernel.spawn("w", caps=[f"fs:/d{j}/**:read" for j in range(40)]))
            kernel.spawn("w", caps=["fs:/live/**:read"])
        live = kernel.live
        scopes = [c["scope"] for pid in live for c in kernel.capabilities(pid)]
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, live, scopes, flush=True)
trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
"""


def test_opening_loads_the_capabilities_of_live_processes_only(tmp_path: Path) -> None:
    """Processes that have ended cost an opening nothing: their capabilities stay in the
    store (`libos caps` reads them there), the live ones' are loaded (2,000 ended processes
    of 40 capabilities: +72 MiB at the opening's peak before; the 1,000 here, +36: well past
    the bound, at half the seeding)."""
    def peak(db: Path, ended: int = 0) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", ENDED, str(db), str(ended)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        mib, rest = done.stdout.split(" ", 1)
        return int(mib), rest.strip()

    peak(tmp_path / "long.db", 1000)
    opened, live = peak(tmp_path / "long.db")
    empty, _ = peak(tmp_path / "empty.db")
    assert opened - empty < 16, (opened, empty)
    assert live == "[1001] ['/live/**', 'proc/1001']"  # the live one, with what it holds
    shown = subprocess.run([sys.executable, "-m", "broker.cli", "--db", str(tmp_path / "long.db"),
                            "caps", "7", "--json"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, check=True)
    assert len(json.loads(shown.stdout)) == 41  # an ended one's, from the store
