"""The soak of issue 20 (item 7) in its short mode: a hostile process doing every flood at once
beside 50 well-behaved ones for a few seconds, the broker SIGKILLed mid-flood, then recovered.
What must hold is checked by `bench.soak_check` (each a problem when it does not); speed is
measured by `python -m bench.soak_bench` (60 s), never asserted here."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bench.soak_agents import FLOODS
from bench.soak_bench import SHORT, soak
from bench.soak_check import CAPPED

pytest.importorskip("openai")


def test_a_hostile_process_beside_fifty_well_behaved_ones(tmp_path: Path) -> None:
    out = soak(tmp_path, workers=50, **SHORT)
    checks = out["checks"]
    # Everything `soak_check` asks: the store consistent (`libos audit --verify`), every
    # worker's work done exactly once across the crash, the hostile bounded.
    assert checks["problems"] == []
    workers = checks["workers"]
    assert workers["lines"] >= 50 and workers["messages"] >= 100
    assert workers["approved_writes"] >= 5 and workers["ticks"] >= 5
    # The hostile did all of it: its model was asked again and again, and every flood was
    # called; each call ended in a typed error or within its bounds, as the audit says.
    hostile = checks["hostile"]
    ended = hostile["calls"]["ended"]
    assert out["model_requests"] >= 2 and ended["read_file:OK"] >= 1
    for flood in FLOODS:
        codes = {key.split(":")[1] for key in ended if key.startswith(f"{flood}:")}
        assert codes - {"OUTCOME_UNKNOWN"}, flood  # each ended once before the crash
        if flood in CAPPED:  # and those that cannot end otherwise ended past a bound
            assert codes <= {"LIMIT_EXCEEDED", "SANDBOX_CRASHED", "OUTCOME_UNKNOWN"}, codes
    # The crash cut calls off mid-flood: each whose intent was durable (it had made an
    # effect) has its outcome recorded, as unknown; one with no effect yet left no record (a
    # lazy intent, README "One record for a call with no effect"), so none may be counted on.
    assert not _open_intents(tmp_path / "soak.db")
    # Bounded at once (also checked against the limits by `soak_check`).
    assert out["most_children"]["shell"] <= 4 and out["most_fetches_at_once"] <= 8
    assert out["peaks"]["approvals_pending"] <= 16


def _open_intents(db_path: Path) -> list[int]:
    """`tool.call` intents that no outcome closes (recovery closes each with an unknown one)."""
    db = sqlite3.connect(db_path)
    try:
        closed = {json.loads(detail).get("intent") for detail, in db.execute(
            "SELECT detail FROM audit WHERE syscall='tool.call' AND phase='outcome'")}
        return [seq for seq, in db.execute(
            "SELECT seq FROM audit WHERE syscall='tool.call' AND phase='intent'")
            if seq not in closed]
    finally:
        db.close()
