"""Exactly-once delivery across crashes, at scale: `python -m bench.crash_bench [--runs N]`.

Chains of real brokers (tests/broker/kernel/crash_agent.py), each SIGKILLed at a kill point
drawn at random (around receive, wait_event, the one-shot spend and checkpoint writes), then
one left to finish; after each chain every message taken and every event seen must have
reached its planner exactly once (`crash_chain.exactly_once`). Chains go on until N
(default 200) brokers have died at their kill point.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.broker.kernel.crash_chain import exactly_once, run_chain
from tests.broker.kernel.kill_points import POINTS

KILLS_PER_CHAIN = 4
ONCE = ("spend", "spend.outcome")  # the one-shot use is spent once per chain


def chain_points(rng: random.Random) -> list[str]:
    kills = []
    if rng.random() < 0.5:
        kills.append(f"{rng.choice(ONCE)}:1")
    while len(kills) < KILLS_PER_CHAIN:
        point = rng.choice([p for p in POINTS if p not in ONCE])
        kills.append(f"{point}:{rng.randint(1, 8)}")
    return kills


def run(runs: int = 200, seed: int = 20, steps: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    start = time.perf_counter()
    chains = landed = 0
    points: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    sides: Counter[str] = Counter()  # which image the exec'ing process ended on
    failures: list[str] = []
    while landed < runs:
        kills = chain_points(rng)
        with tempfile.TemporaryDirectory(prefix="libos-crash-") as tmp:
            db = Path(tmp) / "chain.db"
            try:
                landed += run_chain(db, kills, steps=steps)
                counts = exactly_once(db)
                sides[counts.pop("exec")] += 1
                totals.update(counts)
            except AssertionError as exc:
                failures.append(f"{kills}: {str(exc)[-700:]}")
        points.update(k.split(":")[0] for k in kills)
        chains += 1
    return {"brokers_killed": landed, "kills_asked": chains * KILLS_PER_CHAIN,
            "chains": chains, "chains_failed": len(failures), "failures": failures[:5],
            "messages_delivered": totals["messages"], "events_delivered": totals["events"],
            "unknown_outcomes": totals["unknown_outcomes"],
            "lines_cut_off": totals["lines_cut_off"], "exec_sides": dict(sides),
            "points": dict(points),
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.runs, args.seed), indent=2))
