"""Broker memory against history length, measured in real broker processes (see
`memory_agent`): shared by the test (60 steps) and `bench/memory_bench.py` (1,000)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def _agent(*args: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-m", "tests.broker.kernel.memory_agent", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = {}
    for line in done.stdout.splitlines():
        word, *rest = line.split()
        out[f"{word} {rest[0]}" if word == "RSS" else word] = int(rest[-1])
    return out


def measure(tmp: Path, steps: int, mib: int = 8) -> dict[str, Any]:
    ran = _agent("run", str(tmp / "long.db"), str(steps), str(mib))
    opened = _agent("open", str(tmp / "long.db"), str(ran["PID"]))["RSS open"]
    empty = _agent("open", str(tmp / "empty.db"), "0")["RSS open"]
    return {"steps": steps, "read_mib": mib,
            "rss_after_10_steps_mib": round(ran["RSS 10"] / 1024, 1),
            f"rss_after_{steps}_steps_mib": round(ran[f"RSS {steps}"] / 1024, 1),
            "growth_mib": round((ran[f"RSS {steps}"] - ran["RSS 10"]) / 1024, 1),
            "open_with_history_mib": round(opened / 1024, 1),
            "open_empty_mib": round(empty / 1024, 1),
            "open_cost_mib": round((opened - empty) / 1024, 1),
            "store_mib": round((tmp / "long.db").stat().st_size / (1 << 20), 1)}
