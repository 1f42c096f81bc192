"""Many brokers over one PostgreSQL store, beside SQLite, in the same run.

The same work each time: `PROCESSES` processes of `STEPS` steps (each step a `now` tool call:
a `tool.call` and a `clock.now` syscall, each with its intent and outcome records, and two
checkpoints), seeded in the store, then run by real broker processes: `libos serve
--until-idle` with 1, 2 and 4 brokers on PostgreSQL, and `libos resume --all` on SQLite (one
broker, the embedded default). Throughput is counted from the chain's own timestamps (the
first record the brokers appended to the last), so broker start-up is not in it.

PostgreSQL: `$LIBOS_BENCH_PG` (an address whose database this may fill), else a throwaway
cluster started as the tests start theirs (`tests.pg_cluster`, in a checkout).

`python -m bench.brokers_bench`
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, Kernel
from broker.planner import Exit
from broker.store.audit import OPENS
from broker.store.opening import open_store

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 40
STEPS = 25
BROKERS = (1, 2, 4)


class Parked:
    async def next_action(self, history: Any) -> Exit:
        await trio.sleep_forever()
        raise AssertionError


IMAGE = AgentImage("bench", tools=("now",), needs=("clock:*:read",), planner={
    "kind": "scripted", "actions": [{"tool": "now", "args": {}}] * STEPS})


async def _seed(target: str, broker: str | None) -> int:
    """The processes, in the store and held by nobody; the chain's last seq before them."""
    async with Kernel.open(target, broker=broker, planners=lambda image, pid: Parked(),
                           fs_root=Path(tempfile.mkdtemp(prefix="libos-bench-fs-"))) as kernel:
        await kernel.register_image(IMAGE)
        for _ in range(PROCESSES):
            kernel.spawn("bench", caps=["clock:*:read"])
        return kernel.store.last_seq()


def _figures(target: str, after: int, wall: float) -> dict[str, Any]:
    store = open_store(target, writer=False)
    try:
        records = list(store.audit_records(after=after))
    finally:
        store.close()
    span = max(r.ts for r in records) - min(r.ts for r in records)
    syscalls = sum(1 for r in records if r.record.phase in OPENS
                   and r.record.syscall != "tool.call")
    steps = sum(1 for r in records if r.record.phase in OPENS
                and r.record.syscall == "tool.call")
    return {"syscalls_per_s": syscalls / span, "steps_per_s": steps / span,
            "records": len(records), "wall_s": wall}


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(state)}


def _run_brokers(dsn: str, count: int, state: Path) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", "--db", dsn,
                               "--broker", f"bench{n}", "--until-idle", "--json"], cwd=ROOT,
                              env=_env(state), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for n in range(count)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a broker failed: {err[-2000:]}")
    return time.perf_counter() - start


def _sqlite(root: Path) -> dict[str, Any]:
    db = str(root / "bench.db")
    after = trio.run(_seed, db, None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "broker.cli", "resume", "--all", "--db", db,
                    "--json"], cwd=ROOT, env=_env(root / "state"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return _figures(db, after, time.perf_counter() - start)


def _postgres(dsn_for: Any, root: Path) -> dict[str, Any]:
    out = {}
    for count in BROKERS:
        dsn = dsn_for()
        state = root / f"state{count}"
        os.environ["XDG_STATE_HOME"] = str(state)  # the seeding broker's anchor, beside
        after = trio.run(_seed, dsn, "seed")
        wall = _run_brokers(dsn, count, state)
        out[f"{count}_brokers"] = _figures(dsn, after, wall)
    return out


def run() -> dict[str, Any]:
    saved = os.environ.get("XDG_STATE_HOME")
    with tempfile.TemporaryDirectory(prefix="libos-brokers-bench-") as tmp:
        root = Path(tmp)
        try:
            results: dict[str, Any] = {"work": f"{PROCESSES} processes x {STEPS} steps",
                                       "sqlite_1_broker": _sqlite(root)}
            given = os.environ.get("LIBOS_BENCH_PG")
            if given:
                results["postgres"] = _postgres(lambda: given, root)
            else:
                sys.path.insert(0, str(ROOT))
                from tests.pg_cluster import Cluster

                cluster = Cluster()
                try:
                    results["postgres"] = _postgres(cluster.create_database, root)
                finally:
                    cluster.stop()
        finally:
            if saved is None:
                os.environ.pop("XDG_STATE_HOME", None)
            else:
                os.environ["XDG_STATE_HOME"] = saved
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
