"""Chains of crashes at chosen kill points, and the exactly-once check after them: shared
by the crash harness's CI test and `bench/crash_bench.py` (hundreds of runs)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from broker.store import SQLiteStore, verify_chain

ROOT = Path(__file__).resolve().parents[3]


def run_broker(db: Path, kill_at: str | None, *, steps: int, pause: float,
               timeout: float = 120) -> tuple[int, str]:
    """One broker life: (return code, stdout). With `kill_at` it dies there, by SIGKILL."""
    env = {**os.environ, "LIBOS_CRASH_STEPS": str(steps), "LIBOS_CRASH_PAUSE": str(pause)}
    env.pop("LIBOS_KILL_AT", None)
    if kill_at:
        env["LIBOS_KILL_AT"] = kill_at
    done = subprocess.run([sys.executable, "-m", "tests.broker.kernel.crash_agent", str(db)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode not in (0, -9):
        raise AssertionError(f"broker failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.returncode, done.stdout


def run_chain(db: Path, kills: list[str], *, steps: int, pause: float = 0.0) -> int:
    """A broker killed at each point in turn, then one left to finish. Returns how many of
    the kills landed (a point the run never reached lets that broker finish instead)."""
    landed = 0
    for kill_at in kills:
        code, _ = run_broker(db, kill_at, steps=steps, pause=pause)
        landed += code == -9
    code, out = run_broker(db, None, steps=steps, pause=pause)
    assert code == 0 and "DONE" in out.split(), out[-500:]
    return landed


def appends_accounted(store: SQLiteStore, root: Path) -> int:
    """Every appended line matches the audit, one to one: each `fs.write` append was intended
    once (a step that may have written is never run again), its line is in its file once, and
    a line is missing only when the broker died between that write's durable intent and its
    outcome (its outcome recorded as unknown: the effect may not have happened, and is not
    repeated); no line is there without its intent. Returns how many lines are missing."""
    intents: dict[int, tuple[str, str]] = {}  # seq -> (path, data)
    outcomes: dict[int, dict[str, Any]] = {}  # intent seq -> its outcome's detail
    for stored in store.audit_records():
        record = stored.record
        if record.syscall != "fs.write":
            continue
        if record.phase == "intent" and record.detail["args"].get("append"):
            intents[stored.seq] = (str(record.resource), record.detail["args"]["data"])
        elif record.phase == "outcome":
            outcomes[record.detail["intent"]] = record.detail
    twice = {write: n for write, n in Counter(intents.values()).items() if n > 1}
    assert not twice, f"appends intended more than once: {twice}"
    files: dict[str, list[str]] = {}
    for path in {path for path, _ in intents.values()}:
        file = root / path.lstrip("/")
        files[path] = file.read_text().splitlines(keepends=True) if file.exists() else []
        lines = files[path]
        assert len(lines) == len(set(lines)), f"{path}: an append repeated: {lines}"
        stray = set(lines) - {data for p, data in intents.values() if p == path}
        assert not stray, f"{path}: lines written without an intent: {stray}"
    missing = 0
    for seq, (path, data) in intents.items():
        outcome = outcomes.get(seq)
        assert outcome is not None, f"fs.write {seq} ({path}) left without an outcome"
        if data not in files[path]:
            assert outcome.get("unknown"), (
                f"{path}: {data!r} missing, yet its write's outcome is known: {outcome}")
            missing += 1
        elif not outcome.get("unknown"):
            assert outcome["ok"], outcome
    return missing


def exec_side(db: Path, store: SQLiteStore) -> str:
    """The process that exec'd is wholly on one side, never halfway: its image, checkpoint,
    capabilities and tool table all the old image's, or all the new one's; each of its lines
    intended once and written at most once, in order, the old image's step after the exec
    never. A line may be missing only as `appends_accounted` allows: its write cut off by a
    crash after its intent was durable, recorded as unknown. Says which side."""
    [row] = [p for p in store.list_processes() if p["image"] in ("shifter", "shifted")]
    pid, image = row["pid"], row["image"]
    checkpoint = store.checkpoint(pid)
    assert checkpoint is not None and checkpoint["state"]["image"][0] == image
    caps = [(c.kind, c.scope, c.uses) for _, c in store.load_capabilities() if c.owner == pid]
    out = db.parent / (db.stem + "-fs") / "log" / "shift" / "out.txt"
    lines = out.read_text().split() if out.exists() else []
    intended = [r.record.detail["args"]["data"].strip() for r in store.audit_records(pid=pid)
                if r.record.syscall == "fs.write" and r.record.phase == "intent"]
    assert store.stored_registrations(pid) == []
    if image == "shifted":
        live = {(kind, scope) for kind, scope, uses in caps if uses != 0}
        assert live == {("fs", "/log/shift/**"), ("obj", f"proc/{pid}")}, caps
        # Each image's write was tried exactly once (the old image's last step never).
        assert intended == ["before", "after"], intended
        assert lines == [line for line in intended if line in lines], lines
        assert checkpoint["state"]["history_from"] >= 3
        return "after"
    assert ("proc", "shifted", None) in caps and "after" not in lines, (caps, lines)
    assert "after" not in intended and "never" not in intended, intended
    return "before"


def exactly_once(db: Path) -> dict[str, Any]:
    """Check that every message taken and every event seen reached its process's planner
    exactly once, and that nothing delivered was left marked untaken (or unseen)."""
    store = SQLiteStore(db, writer=False)
    try:
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count, problems = verify_chain(store.audit_records())
        assert problems == [] and count > 0
        workers = [p["pid"] for p in store.list_processes() if p["image"] != "scribe"]
        for pid in workers:
            row = store.get_process(pid)
            assert (row["state"], row["exit_code"]) == ("exited", 0), row
        messages: Counter[int] = Counter()
        events: Counter[tuple[int, int]] = Counter()
        for pid in workers:
            for obs in store.observations(pid):
                tool, result = obs["action"].get("tool"), obs["result"]
                if tool == "receive" and isinstance(result, dict):
                    messages[result["id"]] += 1
                elif tool == "wait_event" and isinstance(result, dict):
                    events[(pid, result["id"])] += 1
        taken = {r["id"] for r in store._query("SELECT id FROM mailbox WHERE taken IS NOT NULL")}
        seen = {(r["pid"], r["event"]) for r in store._query("SELECT pid, event FROM raised_seen")
                if r["pid"] in workers}
        twice = {k: n for k, n in messages.items() if n > 1}
        assert not twice, f"messages delivered more than once: {twice}"
        assert not {k: n for k, n in events.items() if n > 1}, "an event delivered twice"
        assert set(messages) == taken, (
            f"taken but never delivered: {sorted(taken - set(messages))}; "
            f"delivered but not taken: {sorted(set(messages) - taken)}")
        assert set(events) == seen, (
            f"seen but never delivered: {sorted(seen - set(events))}; "
            f"delivered but not seen: {sorted(set(events) - seen)}")
        once = [r.record for r in store.audit_records(pid=1)
                if r.record.syscall == "fs.write" and r.record.resource == "/once/token"]
        assert len([r for r in once if r.phase == "intent"]) == 1  # the one-shot: once
        unknown = [r for r in store.audit_records() if r.record.detail.get("unknown")]
        missing = appends_accounted(store, db.parent / (db.stem + "-fs"))
        return {"messages": len(messages), "events": len(events), "audit_records": count,
                "unknown_outcomes": len(unknown), "lines_cut_off": missing,
                "exec": exec_side(db, store)}
    finally:
        store.close()
