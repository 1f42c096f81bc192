"""Hypothesis at length: `python -m bench.fuzz_bench [--examples N ...] [--only NAME ...]`.

The property tests of capabilities (`tests/broker/caps/test_cap_properties.py`: forged specs,
narrowings, derived children) and of frames (`tests/broker/protocol/test_fuzz.py`: random and
mutated bytes into both ends of a connection and into the frame decoder, values through
encode and parse) run in CI with Hypothesis's default 100 examples each. Here each runs with
N examples per mode, by default two modes: 100,000 and 1,000,000.

A mode is run in rounds of at most 100,000 examples, each round from a seed of its own (the
search tree Hypothesis keeps to avoid repeats grows with the examples of a round, so rounds
keep memory bounded; examples of different rounds may repeat). The output gives, per property
and mode, the examples asked for and those the test body actually ran (Hypothesis stops early
when it has tried everything a strategy can make), the seconds taken, and the first failure
with Hypothesis's report of its falsifying example. The exit status is 1 if any property
failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, Phase, seed, settings
from rich.console import Console
from rich.table import Table

# name -> (module, test function): every Hypothesis property of capabilities and frames.
PROPERTIES: dict[str, tuple[str, str]] = {
    "caps: forged spec refused or round-trips": (
        "tests.broker.caps.test_cap_properties",
        "test_a_forged_spec_is_refused_cleanly_or_round_trips"),
    "caps: a narrowing covers nothing more": (
        "tests.broker.caps.test_cap_properties",
        "test_a_narrowing_never_covers_more_than_what_it_narrows"),
    "caps: a derived child gets nothing more": (
        "tests.broker.caps.test_cap_properties",
        "test_a_derived_child_is_never_allowed_what_its_parent_is_not"),
    "frames: random bytes into a connection": (
        "tests.broker.protocol.test_fuzz", "test_random_bytes_give_only_protocol_errors"),
    "frames: mutated streams into a connection": (
        "tests.broker.protocol.test_fuzz", "test_mutated_streams_give_only_protocol_errors"),
    "frames: random bytes into the decoder": (
        "tests.broker.protocol.test_fuzz", "test_frame_decoder_on_random_bytes"),
    "frames: mutated frames into the decoder": (
        "tests.broker.protocol.test_fuzz", "test_mutated_frames_on_frame_decoder"),
    "frames: values through encode and parse": (
        "tests.broker.protocol.test_fuzz", "test_encode_and_parse_accept_or_refuse_cleanly"),
}
MODES = (100_000, 1_000_000)
ROUND = 100_000


def _fresh(module: str, name: str) -> Any:
    """The test as its module defines it, decorated anew (settings apply once per function)."""
    return getattr(importlib.reload(importlib.import_module(module)), name)


def run_round(module: str, name: str, examples: int, round_seed: int) -> tuple[int, str | None]:
    """Run one property for `examples` examples: (examples the body ran, failure or None)."""
    test = _fresh(module, name)
    ran = 0
    inner: Callable[..., Any] = test.hypothesis.inner_test

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal ran
        ran += 1
        return inner(*args, **kwargs)

    test.hypothesis.inner_test = counted
    configured = seed(round_seed)(settings(
        max_examples=examples, deadline=None, database=None, derandomize=False,
        phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))(test))
    try:
        configured()
    except Exception as exc:  # a failing property: Hypothesis's report says which example
        return ran, f"{type(exc).__name__}: {exc}"[:4000]
    return ran, None


def run(modes: Sequence[int] = MODES, only: Sequence[str] = (), base_seed: int = 14,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (module, test) in PROPERTIES.items():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        for mode in modes:
            start = time.perf_counter()
            ran, failure, rounds = 0, None, 0
            while ran < mode and failure is None:
                want = min(ROUND, mode - ran)
                got, failure = run_round(module, test, want, base_seed + rounds)
                rounds += 1
                ran += got
                if got < want and failure is None:
                    break  # the strategy is exhausted: more rounds would repeat it
            seconds = time.perf_counter() - start
            results[f"{name} @ {mode:,}"] = {
                "examples asked": mode, "examples run": ran, "rounds": rounds,
                "seconds": round(seconds, 1),
                "examples per second": round(ran / seconds) if seconds else 0,
                "failure": failure}
            progress(f"{name} @ {mode:,}: {ran:,} examples in {seconds:,.1f} s"
                     + (f" — FAILED: {failure.splitlines()[0]}" if failure else ""))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_bench")
    parser.add_argument("--examples", type=int, action="append",
                        help=f"examples per property (repeatable; default {MODES})")
    parser.add_argument("--only", action="append", default=[],
                        help="properties whose name contains this (repeatable)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json-out", help="also write the figures to this file")
    args = parser.parse_args(argv)
    console = Console()
    results = run(args.examples or MODES, args.only, args.seed, console.print)
    table = Table("property @ examples asked", "examples run", "seconds", "per second",
                  "result", title="fuzz_bench")
    for key, figures in results.items():
        table.add_row(key, f"{figures['examples run']:,}", f"{figures['seconds']:,.1f}",
                      f"{figures['examples per second']:,}",
                      "FAILED" if figures["failure"] else "held")
    console.print(table)
    for key, figures in results.items():
        if figures["failure"]:
            console.print(f"[bold]{key}[/bold]\n{figures['failure']}", markup=True)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(results, out, indent=2)
    return 1 if any(f["failure"] for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
