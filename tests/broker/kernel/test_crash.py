"""The crash harness: a real broker process, killed with SIGKILL at random points, restarted,
again and again; then every durability property is checked against what was acknowledged.

* the audit chain verifies, and SQLite's own integrity check passes;
* no acknowledged object is lost (every `ACK <version>` the broker printed is in the store);
* no effect is silently repeated (every appended line is unique in its file);
* the one-shot grant was spent exactly once, across all the crashes;
* no message was delivered twice; every process that was running ends;
* a torn write at the end of the WAL (garbage where a frame was being written) is survived.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from broker.store import SQLiteStore, verify_chain
from tests.broker.kernel.crash_agent import STEPS, WORKERS
from tests.broker.kernel.crash_chain import appends_accounted, exactly_once, run_chain

ROOT = Path(__file__).resolve().parents[3]
RUNS = int(os.environ.get("LIBOS_CRASH_RUNS", "50"))


def start(db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.broker.kernel.crash_agent", str(db)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(proc: subprocess.Popen[str], word: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.strip() == word:
            return lines
    raise AssertionError(f"broker never said {word}: {proc.stderr.read() if proc.stderr else ''}")


def tear_wal(db: Path, rng: random.Random) -> None:
    wal = Path(str(db) + "-wal")
    if wal.exists():
        with wal.open("ab") as f:
            f.write(rng.randbytes(rng.randrange(1, 3000)))


def test_sigkill_at_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("LIBOS_CRASH_SEED", "7")))
    db = tmp_path / "crash.db"
    acked: list[int] = []
    kills = 0
    for run in range(RUNS):
        broker = start(db)
        wait_for(broker, "READY", timeout=30)
        time.sleep(rng.uniform(0.0, 0.25))
        broker.send_signal(signal.SIGKILL)
        out, _ = broker.communicate(timeout=30)
        kills += broker.returncode == -signal.SIGKILL
        acked += [int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK")]
        if run % 10 == 9:
            tear_wal(db, rng)
    final = start(db)
    lines = wait_for(final, "DONE", timeout=120)
    final.wait(timeout=30)
    acked += [int(line.split()[1]) for line in lines if line.startswith("ACK")]
    assert kills >= RUNS * 0.8  # most runs really died by SIGKILL, mid-work

    store = SQLiteStore(db, writer=False)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count, problems = verify_chain(store.audit_records())
    assert problems == [] and count > 0

    # Every acknowledged object version is there.
    assert acked
    newest = store.get_object("acked", "counter")["version"]
    assert newest >= max(acked)
    for version in set(acked):
        store.get_object("acked", "counter", version)

    # Every worker ran to its end; no effect was repeated.
    procs = {p["pid"]: p for p in store.list_processes()}
    for j in range(WORKERS):
        assert procs[j + 1]["state"] == "exited", procs[j + 1]
        lines_written = (tmp_path / "crash-fs" / "log" / f"{j}.txt").read_text().splitlines()
        assert len(lines_written) == len(set(lines_written)), f"worker {j} repeated an append"
        assert len(lines_written) >= STEPS - kills  # unknown outcomes are the only gaps
        assert store.get_object("shared", f"w{j}")["version"] <= STEPS
    # Each append intended once; a line is missing only where its outcome is unknown.
    appends_accounted(store, tmp_path / "crash-fs")

    # The one-shot grant was spent once, whatever the crashes.
    once = [r.record for r in store.audit_records(pid=1)
            if r.record.syscall == "fs.write" and r.record.resource == "/once/token"]
    intents = [r for r in once if r.phase == "intent"]
    assert len(intents) == 1
    token = tmp_path / "crash-fs" / "once" / "token"
    if token.exists():
        assert token.read_text() in ("1", "")
    else:  # a kill after its intent was durable, before the write: spent, its outcome unknown
        outcomes = [r for r in once if r.phase == "outcome"]
        assert [r.detail.get("unknown") for r in outcomes] == [True], outcomes

    # No message was delivered twice.
    delivered = Counter()
    for pid in range(1, WORKERS + 1):
        for obs in store.observations(pid):
            result = obs["result"]
            if obs["action"].get("tool") == "receive" and isinstance(result, dict):
                delivered[result["id"]] += 1
    assert delivered and max(delivered.values()) == 1

    # Outcomes a crash cut off are recorded as unknown, never left open.
    unknown = [r for r in store.audit_records() if r.record.detail.get("unknown")]
    assert all(r.record.phase == "outcome" for r in unknown)
    print(json.dumps({"runs": RUNS, "kills": kills, "acked": len(acked),
                      "unknown_outcomes": len(unknown), "audit_records": count}))


# A SIGKILL where a one-shot use, a message or an event is in flight, one broker after
# another; `bench/crash_bench.py` runs hundreds, at every kill point (checkpoint writes too).
KILLS = ["spend:1", "receive.outcome:2", "event.outcome:2", "event.seen:3", "call.outcome:4",
         "grouped:9"]


@pytest.mark.parametrize("kills", [["exec.intent:1", "exec.switched:1"], ["exec.outcome:1"]],
                         ids=["intent-then-switched", "outcome"])
def test_a_sigkill_during_exec_resumes_on_one_side(tmp_path: Path, kills: list[str]) -> None:
    # Killed before the switch, then (running the exec step again) right after it; or after
    # its outcome: each time the next broker finds the process wholly on one side, and it
    # ends on the new image having written each line once.
    db = tmp_path / "exec.db"
    assert run_chain(db, kills, steps=2) == len(kills)
    counts = exactly_once(db)
    assert counts["exec"] == "after"
    lines = (tmp_path / "exec-fs" / "log" / "shift" / "out.txt").read_text().split()
    assert lines == ["before", "after"]
    store = SQLiteStore(db, writer=False)
    execs = [r.record for r in store.audit_records() if r.record.syscall == "proc.exec"]
    # Each exec asked for the new image; one whose outcome was recorded names both; the
    # cut-off ones are recorded as unknown, none left open.
    assert {r.resource for r in execs if r.phase == "intent"} == {"shifted"}
    done = [r for r in execs if r.phase == "outcome" and r.detail.get("ok")]
    assert [(r.detail["result"]["from"], r.detail["result"]["to"]) for r in done] == (
        [("shifter:1", "shifted:1")] if kills == ["exec.outcome:1"] else [])
    unknown = [r for r in execs if r.detail.get("unknown")]
    assert len(unknown) == len(kills) - len(done)
    assert len([r for r in execs if r.phase == "intent"]) == len(unknown) + len(done)
    store.close()


def test_kill_points_lose_and_repeat_no_message_or_event(tmp_path: Path) -> None:
    db = tmp_path / "points.db"
    landed = run_chain(db, KILLS, steps=3)
    assert landed == len(KILLS)  # every broker died at its point
    counts = exactly_once(db)
    assert counts["messages"] > 0 and counts["events"] > 0
    assert counts["unknown_outcomes"] > 0


def test_writes_cut_off_on_both_sides_of_an_exec_are_unknown_never_redone(
        tmp_path: Path) -> None:
    # Killed once the old image's write has a durable intent and has not run, then once the
    # new image's has (as when another process's record commits them in a group and the
    # broker dies): neither line is ever written, and that is correct only because each
    # write's outcome is recorded as unknown (not silently repeated). The process still
    # ends, on the new image.
    db = tmp_path / "cut.db"
    assert run_chain(db, ["shift.write:1", "shift.write:1"], steps=2) == 2
    counts = exactly_once(db)
    # (the kills' commits may carry other processes' grouped writes too: cut off alike)
    assert counts["exec"] == "after" and counts["lines_cut_off"] >= 2
    assert not (tmp_path / "cut-fs" / "log" / "shift" / "out.txt").exists()
    store = SQLiteStore(db, writer=False)
    [pid] = [p["pid"] for p in store.list_processes() if p["image"] == "shifted"]
    records = [r.record for r in store.audit_records(pid=pid) if r.record.syscall == "fs.write"]
    assert [(r.phase, r.detail.get("unknown"), r.detail.get("args", {}).get("data"))
            for r in records] == [("intent", None, "before\n"), ("outcome", True, None),
                                  ("intent", None, "after\n"), ("outcome", True, None)]
    writes = [obs for obs in store.observations(pid) if obs["action"].get("tool") == "write_file"]
    assert [obs["error"]["code"] for obs in writes] == ["CANCELLED", "CANCELLED"]
    assert all("outcome unknown" in obs["error"]["message"] for obs in writes)
    store.close()
