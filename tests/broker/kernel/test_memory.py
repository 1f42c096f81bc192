"""Memory does not grow with history: a real broker process reading an 8 MiB file step after
step keeps its RSS flat, and a broker opening a store with such a process (live, paused)
costs no more than opening an empty one. `bench/memory_bench.py` runs 1,000 steps."""

from __future__ import annotations

from pathlib import Path

from tests.broker.kernel.memory_check import measure

STEPS = 60  # before the fix: +410 MiB of RSS between step 10 and 60, +490 MiB to open


def test_rss_stays_flat_and_opening_loads_no_history(tmp_path: Path) -> None:
    figures = measure(tmp_path, STEPS)
    print(figures)
    assert figures["growth_mib"] < 64
    assert figures["open_cost_mib"] < 16
    # Stored results are capped like audit payloads: the store does not hold the reads.
    assert figures["store_mib"] < 32
