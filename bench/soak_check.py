"""What must hold after the soak (`bench.soak_bench`), read from the store the brokers left.

- The store is consistent: SQLite's integrity check, and `libos audit --verify` (the chain,
  payloads, tool sources and registrations) run as the real command.
- Nothing is lost, nothing is done twice: each worker exited 0 with no failed step; its
  file holds every line whose write was acknowledged, once, in order (a write cut off by the
  crash at most once); its object's last version is its last acknowledged put (or one cut
  off after it); every message its predecessor sent and saw acknowledged reached it exactly
  once, in order, and every message taken from a worker's mailbox reached its planner once;
  each saw the stop event once; each approved write and each tick did its work.
- The hostile was bounded, every refusal a typed error in the audit: its log lines, the
  records of each call, what it held at once (sandboxes, shell runs, fetches, pending
  approvals), its live children; its model never ended it (the host killed it), and its
  conversation stayed small.

`check` returns the problems (none is a pass) beside the figures it read.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.soak_agents import asks, ticks
from bench.soak_broker import DENO_MAX_IDLE, DENO_SPARES, SoakConfig
from broker import CallLimits, ProcessLimits

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "outcome unknown"
# Floods that can only end one way: past a bound (or cut off by the end of the soak).
CAPPED = {"logs", "refused", "events", "spawns", "bomb"}
TYPED = {"LIMIT_EXCEEDED", "SANDBOX_CRASHED", "CANCELLED", "APPROVAL_DENIED", "CONFLICT"}


def check(cfg: SoakConfig, soaked: dict[str, Any], finished: dict[str, Any],
          outside: dict[str, int]) -> dict[str, Any]:
    """`outside`: what the harness counted at once (`sleep` children, Deno processes,
    fetches served)."""
    db = sqlite3.connect(f"file:{cfg.db}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    problems: list[str] = []
    try:
        facts = _consistent(cfg, db, problems)
        facts.update(_workers(cfg, db, finished, problems))
        facts.update(_hostile(cfg, db, soaked, problems))
        _outside(ProcessLimits(**cfg.process_limits), outside, problems)
    finally:
        db.close()
    return {"problems": problems, **facts}


def _consistent(cfg: SoakConfig, db: sqlite3.Connection, problems: list[str]
                ) -> dict[str, Any]:
    if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        problems.append("SQLite integrity check failed")
    verify = subprocess.run([sys.executable, "-m", "broker.cli", "audit", "--verify", "--json",
                             "--db", cfg.db], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)
    verdict = json.loads(verify.stdout) if verify.stdout.startswith("{") else {}
    if verify.returncode != 0 or not verdict.get("ok"):
        problems.append(f"libos audit --verify: {verify.stdout[-500:]}{verify.stderr[-500:]}")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {"audit_verified": verdict.get("records", 0),
            "rows": {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}}


def _observations(db: sqlite3.Connection, pid: int) -> list[dict[str, Any]]:
    rows = db.execute("SELECT step, action, result, error FROM observations WHERE pid=? "
                      "ORDER BY step", (pid,))
    return [{"step": r["step"], "action": json.loads(r["action"]),
             "result": json.loads(r["result"]) if r["result"] is not None else None,
             "error": json.loads(r["error"]) if r["error"] is not None else None}
            for r in rows]


def _fate(obs: dict[str, Any]) -> str:
    """ok, unknown (cut off by the crash), or failed."""
    if obs["error"] is None:
        return "ok"
    return "unknown" if UNKNOWN in obs["error"].get("message", "") else "failed"


def _workers(cfg: SoakConfig, db: sqlite3.Connection, finished: dict[str, Any],
             problems: list[str]) -> dict[str, Any]:
    pids = json.loads(cfg.roster.read_text())["workers"]
    sent: dict[int, dict[str, set[int]]] = {}
    got: dict[int, list[str]] = {}
    delivered: Counter[int] = Counter()
    totals: Counter[str] = Counter()
    for j, pid in enumerate(pids):
        status = finished["workers"].get(str(pid), {})
        if (status.get("state"), status.get("exit_code")) != ("exited", 0):
            problems.append(f"worker {j} did not finish: {status}")
        writes: dict[str, set[int]] = {"ok": set(), "unknown": set()}
        puts: dict[str, set[int]] = {"ok": set(), "unknown": set()}
        sent[j] = {"ok": set(), "unknown": set()}
        got[j] = []
        stops = 0
        for obs in _observations(db, pid):
            tool, args, fate = obs["action"]["tool"], obs["action"]["args"], _fate(obs)
            totals[f"steps_{fate}"] += 1
            if fate == "failed":
                problems.append(f"worker {j} step {obs['step']} ({tool}): {obs['error']}")
                continue
            if tool == "write_file" and args["path"] == f"/w/{j}.txt":
                writes[fate].add(int(args["data"].split(":")[1]))
            elif tool == "write_file" and fate == "ok":
                totals["approved_writes"] += 1
                if not (cfg.fs_root / args["path"].lstrip("/")).exists():
                    problems.append(f"worker {j}: approved write {args['path']} missing")
            elif tool == "put_object":
                puts[fate].add(args["value"])
            elif tool == "send" and not args["body"].endswith(":end"):
                sent[j][fate].add(int(args["body"].split(":")[1]))
            elif tool == "receive" and isinstance(obs["result"], dict):
                got[j].append(obs["result"]["body"])
                delivered[obs["result"]["id"]] += 1
            elif tool == "wait_event" and obs["result"] is not None:
                stops += 1
            elif tool == "tick" and fate == "ok" and obs["result"] != args["i"]:
                problems.append(f"worker {j}: tick {args['i']} returned {obs['result']}")
        if stops != 1:
            problems.append(f"worker {j} saw the stop event {stops} times")
        _exactly(f"worker {j}'s file", _lines(cfg, j), writes, problems)
        _last_put(db, j, puts, problems)
        totals["lines"] += len(writes["ok"])
        totals["ticks"] += ticks(j) * len(writes["ok"])
        totals["asking_workers"] += asks(j)
    for j in range(len(pids)):
        before = (j - 1) % len(pids)
        bodies = got[j]
        if bodies.count(f"{before}:end") != 1:
            problems.append(f"worker {j} got its predecessor's end marker "
                            f"{bodies.count(f'{before}:end')} times")
        numbers = [int(b.split(":")[1]) for b in bodies if b.startswith(f"{before}:")
                   and not b.endswith(":end")]
        if len(numbers) + 1 != len(bodies):
            problems.append(f"worker {j} got mail from someone else: {bodies[:5]}")
        _exactly(f"worker {j}'s mail", numbers, sent[before], problems)
        totals["messages"] += len(bodies)
    _mailboxes(db, pids, delivered, problems)
    return {"workers": dict(totals)}


def _lines(cfg: SoakConfig, j: int) -> list[int]:
    path = cfg.fs_root / "w" / f"{j}.txt"
    text = path.read_text() if path.exists() else ""
    return [int(line.split(":")[1]) for line in text.splitlines()]


def _exactly(what: str, seen: list[int], acked: dict[str, set[int]],
             problems: list[str]) -> None:
    """`seen` holds every acknowledged item once, in order, and else only items whose
    outcome the crash left unknown (at most once)."""
    if seen != sorted(set(seen)):
        problems.append(f"{what}: out of order or twice: {_first_repeat(seen)}")
    if lost := acked["ok"] - set(seen):
        problems.append(f"{what}: {len(lost)} acknowledged lost, e.g. {sorted(lost)[:5]}")
    if extra := set(seen) - acked["ok"] - acked["unknown"]:
        problems.append(f"{what}: {len(extra)} never asked for, e.g. {sorted(extra)[:5]}")


def _first_repeat(seen: list[int]) -> Any:
    return next((a for a, b in pairwise(seen) if b <= a), None)


def _last_put(db: sqlite3.Connection, j: int, puts: dict[str, set[int]],
              problems: list[str]) -> None:
    rows = db.execute("SELECT payload FROM objects WHERE ns='w' AND name=? ORDER BY version",
                      (f"w{j}",)).fetchall()
    values = [json.loads(r[0]) for r in rows]
    _exactly(f"worker {j}'s object versions", values, puts, problems)


def _mailboxes(db: sqlite3.Connection, pids: list[int], delivered: Counter[int],
               problems: list[str]) -> None:
    marks = ",".join("?" * len(pids))
    rows = db.execute(f"SELECT id, taken FROM mailbox WHERE to_pid IN ({marks})", pids)
    taken = {r["id"] for r in rows if r["taken"] is not None}
    untaken = db.execute(f"SELECT COUNT(*) FROM mailbox WHERE to_pid IN ({marks}) "
                         "AND taken IS NULL", pids).fetchone()[0]
    if twice := [m for m, n in delivered.items() if n > 1]:
        problems.append(f"messages delivered twice: {twice[:5]}")
    if taken != set(delivered):
        problems.append(f"taken but never delivered: {sorted(taken - set(delivered))[:5]}; "
                        f"delivered but not taken: {sorted(set(delivered) - taken)[:5]}")
    if untaken:
        problems.append(f"{untaken} messages left in the workers' mailboxes")


def _hostile(cfg: SoakConfig, db: sqlite3.Connection, soaked: dict[str, Any],
             problems: list[str]) -> dict[str, Any]:
    pid, peaks = soaked["hostile"], soaked["peaks"]
    limits, calls = ProcessLimits(**cfg.process_limits), CallLimits(**cfg.call_limits)
    row = db.execute("SELECT state, reason FROM processes WHERE pid=?", (pid,)).fetchone()
    if (row["state"], row["reason"]) != ("killed", "the soak is over"):
        problems.append(f"the hostile ended on its own: {dict(row)}")
    bounds = {"sandboxes_held": limits.sandboxes, "broker_sandboxes_held":
              limits.broker_sandboxes, "shell_held": limits.shell,
              "fetch_held": limits.fetch, "approvals_pending": limits.approvals,
              "descendants": limits.descendants}
    for key, bound in bounds.items():
        if peaks.get(key, 0) > bound:
            problems.append(f"the hostile held {peaks[key]} {key}, past {bound}")
    logs = db.execute("SELECT COUNT(*) FROM events WHERE pid=? AND kind='log'",
                      (pid,)).fetchone()[0]
    if logs > limits.log_bytes // limits.log_line_bytes + 1:
        problems.append(f"the hostile stored {logs} log lines")
    pending = db.execute("SELECT COUNT(*) FROM approvals WHERE pid=? AND state='pending'",
                         (pid,)).fetchone()[0]
    if pending:
        problems.append(f"{pending} of the hostile's approval requests still pending")
    audited = _hostile_calls(db, pid, calls, soaked["outcomes"], problems)
    checkpoint = db.execute("SELECT LENGTH(state) FROM checkpoint_log WHERE pid=? ORDER BY id"
                            " DESC LIMIT 1", (pid,)).fetchone()
    turns = db.execute("SELECT COUNT(*), SUM(LENGTH(turn)) FROM planner_turns WHERE pid=?",
                       (pid,)).fetchone()
    if cfg.model and (checkpoint is None or checkpoint[0] > 1 << 20):
        problems.append(f"the hostile's checkpoint is {checkpoint and checkpoint[0]} bytes")
    children = db.execute("SELECT COUNT(*) FROM processes WHERE parent=?", (pid,)).fetchone()[0]
    return {"hostile": {
        "calls": audited, "log_lines": logs, "children_spawned": children,
        "checkpoint_bytes": checkpoint and checkpoint[0], "conversation_rows": turns[0],
        "conversation_bytes": turns[1],
        "approvals": dict(db.execute("SELECT state, COUNT(*) FROM approvals WHERE pid=? "
                                     "GROUP BY state", (pid,)).fetchall()),
        }}


def _outside(limits: ProcessLimits, most: dict[str, int], problems: list[str]) -> None:
    # Live Deno processes: the sandboxed calls in flight, the idle pool, spares, the checker.
    bounds = {"shell": limits.shell, "fetches": limits.fetch,
              "deno": limits.broker_sandboxes + DENO_MAX_IDLE + DENO_SPARES + 1}
    for key, bound in bounds.items():
        if most.get(key, 0) > bound:
            problems.append(f"{most[key]} {key} at once, past {bound}")


def _hostile_calls(db: sqlite3.Connection, pid: int, calls: CallLimits,
                   seen: dict[str, int], problems: list[str]) -> dict[str, Any]:
    """Each flood call's audited outcome, against what the host saw; records per call."""
    ended: Counter[str] = Counter()
    for r in db.execute("SELECT resource, detail FROM audit WHERE pid=? AND inv IS NULL AND "
                        "syscall='tool.call' AND phase IN ('outcome', 'intent+outcome')", (pid,)):
        detail = json.loads(r["detail"])
        ended[f"{r['resource']}:{'OK' if detail.get('ok') else detail.get('error')}"] += 1
    for key, n in seen.items():
        tool, code = key.split(":")
        if ended[key] < n:
            problems.append(f"{tool}: the host saw {n} calls end {code}, the audit {ended[key]}")
        if tool in CAPPED and code == "OK":
            problems.append(f"{tool}: a flood ran to its end {n} times")
        if code != "OK" and code not in TYPED:
            problems.append(f"{tool}: a call ended {code}")
    most = db.execute("SELECT tool, MAX(n) FROM (SELECT tool, inv, COUNT(*) AS n FROM audit "
                      "WHERE pid=? AND inv IS NOT NULL GROUP BY inv) GROUP BY tool",
                      (pid,)).fetchall()
    per_call = {tool: n for tool, n in most}
    # A refused attempt is one record, an allowed one two (intent, outcome); the attempt
    # that crosses the cap is one more, and the call's own two.
    for tool, bound in (("refused", calls.max_syscalls + 1),
                        ("events", 2 * calls.max_syscalls + 1),
                        ("spawns", 2 * calls.max_syscalls + 1)):
        if per_call.get(tool, 0) > bound:
            problems.append(f"{tool}: {per_call[tool]} audit records in one call")
    return {"ended": dict(ended), "most_records_per_call": per_call}
