"""Broker memory against history: `python -m bench.memory_bench [--steps N] [--mib M]`.

A real broker process reads an M-MiB file (default 8) N times (default 1,000); its RSS after
10 steps and after N, what opening the store with that (paused, live) process costs against
opening an empty one, and the store's size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from tests.broker.kernel.memory_check import measure


def run(steps: int = 1000, mib: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-mem-") as tmp:
        return measure(Path(tmp), steps, mib)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.steps, args.mib), indent=2))
