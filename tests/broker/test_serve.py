"""`libos serve`: brokers as real OS processes over one PostgreSQL store, with real failures.

Three brokers run 100 processes and one is SIGKILLed mid-run: every process finishes, each
step in its history once (nothing lost, nothing repeated), and the one chain all of them
appended to verifies. A broker frozen (SIGSTOP) past its lease and woken has its writes
refused by fencing and gives the process up; the broker that took it finishes it. A second
broker with the same identity is refused with a typed error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.cli import main as cli
from broker.kernel.image import AgentImage
from broker.planner import Exit
from broker.store.postgres import IDENTITY_LOCK
from tests.broker.store.conftest import raw
from tests.conftest import bare_env

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


class Parked:
    """The seeding broker's planner: it never acts, so every step is run by a served broker
    (which builds the planner the image describes)."""

    async def next_action(self, history: Any) -> Exit:
        await trio.sleep_forever()
        raise AssertionError


async def seed(dsn: str, image: AgentImage, count: int, caps: list[str]) -> list[int]:
    """`count` processes in the store, leased to nobody (the seeding broker closes)."""
    async with Kernel.open(dsn, broker="seed", planners=lambda image, pid: Parked(),
                           fs_root=Path(os.environ["XDG_STATE_HOME"]) / "seed-fs") as kernel:
        await kernel.register_image(image)
        return [kernel.spawn(image.name, caps=caps) for _ in range(count)]


def broker(dsn: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--db", dsn, "--broker", name, "--json",
         *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=bare_env(XDG_STATE_HOME=os.environ["XDG_STATE_HOME"]))


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with raw(dsn) as db:
        return [tuple(r) for r in db.execute(sql, params).fetchall()]


async def until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await trio.sleep(0.05)


def finish(proc: subprocess.Popen[str], seconds: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=seconds)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def histories(dsn: str, pids: list[int]) -> dict[int, list[int]]:
    rows = query(dsn, "SELECT pid, step FROM observations ORDER BY pid, step")
    steps: dict[int, list[int]] = {pid: [] for pid in pids}
    for pid, step in rows:
        steps.setdefault(pid, []).append(step)
    return steps


def verified(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = cli(["audit", "--verify", "--db", dsn, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]


def session_states(dsn: str, name: str) -> list[str]:
    return [r[0] for r in query(dsn, "SELECT state FROM pg_stat_activity WHERE"
                                " application_name=?", (f"libos broker {name}",))]


def freeze_between_transactions(dsn: str, proc: subprocess.Popen[str], name: str) -> None:
    """SIGSTOP a broker between two of its transactions (frozen inside one, it would hold
    the write lock until the server ends its session: a test of its own, below)."""
    for _ in range(200):
        if session_states(dsn, name) == ["idle"]:
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            if session_states(dsn, name) == ["idle"]:
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the broker was never between transactions")


def one_outcome_each(dsn: str) -> None:
    """Every intent has exactly one outcome (a cut-off one: `outcome unknown`, once, by the
    broker that took the process over; never another by the broker that lost it)."""
    intents = query(dsn, "SELECT COUNT(*) FROM audit WHERE phase='intent'")[0][0]
    outcomes = query(dsn, "SELECT COUNT(*), COUNT(DISTINCT detail::json->>'intent')"
                     " FROM audit WHERE phase='outcome'")[0]
    assert outcomes[0] == outcomes[1] == intents


def worker(*actions: dict[str, Any]) -> AgentImage:
    return AgentImage("worker", tools=("sleep", "now"), needs=("clock:*:read,sleep",),
                      planner={"kind": "scripted", "actions": list(actions)})


async def test_three_brokers_one_killed_every_process_finishes_once(
        pg_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    step = {"tool": "sleep", "args": {"seconds": 0.3}}
    pids = await seed(pg_database, worker(step, {"tool": "now", "args": {}}, step,
                                          {"tool": "now", "args": {}}),
                      100, ["clock:*:read,sleep"])
    brokers = {name: broker(pg_database, name, "--lease", "2", "--until-idle")
               for name in ("b1", "b2", "b3")}
    try:
        # Mid-run: b2 holds live processes, some of them mid-step.
        def b2_busy() -> bool:
            return len(query(pg_database, "SELECT l.pid FROM leases l JOIN processes p ON"
                             " p.pid=l.pid WHERE l.holder='b2' AND p.state IN"
                             " ('running','waiting')")) >= 3
        await until(b2_busy, 60, "broker b2 to run processes")
        brokers["b2"].send_signal(signal.SIGKILL)
        brokers["b2"].wait(10)
        # What it died holding, read once it is dead (read before, a process it ended
        # meanwhile counted as orphaned); its leases last 2 s before another broker may take
        # them, so they still name it here.
        orphaned = {r[0] for r in query(
            pg_database, "SELECT l.pid FROM leases l JOIN processes p ON p.pid=l.pid WHERE"
            " l.holder='b2' AND p.state NOT IN ('exited','killed')")}
        outcomes = {name: finish(proc, 120) for name, proc in brokers.items() if name != "b2"}
    finally:
        for proc in brokers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    states = query(pg_database, "SELECT pid, state, exit_code FROM processes WHERE pid IN"
                   f" ({','.join(map(str, pids))})")
    assert sorted(states) == [(pid, "exited", 0) for pid in pids]
    assert orphaned  # b2 died holding these, and the others took them over
    took_over = {pid for out in outcomes.values() for pid in out["finished"]} & orphaned
    assert took_over == orphaned
    assert histories(pg_database, pids) == {pid: list(range(STEPS)) for pid in pids}
    one_outcome_each(pg_database)
    verified(pg_database, capsys)


async def test_a_frozen_broker_is_fenced_and_gives_the_process_up(
        pg_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    [pid] = await seed(pg_database, worker({"tool": "now", "args": {}},
                                           {"tool": "sleep", "args": {"seconds": 2}},
                                           {"tool": "now", "args": {}}),
                       1, ["clock:*:read,sleep"])
    first = broker(pg_database, "frozen", "--lease", "1")
    second = None
    try:
        await until(lambda: query(pg_database, "SELECT pid FROM leases WHERE holder='frozen'"
                                  " AND expires > 0"), 30, "the first broker to take it")
        await until(lambda: query(pg_database, "SELECT step FROM observations WHERE pid=?",
                                  (pid,)), 30, "its first step")
        freeze_between_transactions(pg_database, first, "frozen")  # mid-sleep
        second = broker(pg_database, "taker", "--lease", "1", "--until-idle")
        await until(lambda: query(pg_database, "SELECT pid FROM leases WHERE holder='taker'"),
                    30, "the second broker to take it over")
        first.send_signal(signal.SIGCONT)
        outcome_second = finish(second, 60)
        await trio.sleep(1.0)  # the woken broker notices
        first.send_signal(signal.SIGTERM)
        outcome_first = finish(first, 30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
    assert outcome_second["finished"] == [pid]
    [given_up] = outcome_first["given_up"]
    assert given_up["pid"] == pid and "lease" in given_up["why"]
    assert outcome_first["finished"] == []
    assert query(pg_database, "SELECT state, exit_code FROM processes WHERE pid=?",
                 (pid,)) == [("exited", 0)]
    assert histories(pg_database, [pid]) == {pid: [0, 1, 2]}
    one_outcome_each(pg_database)
    verified(pg_database, capsys)


def test_two_brokers_with_one_identity(pg_database: str) -> None:
    first = broker(pg_database, "twin")
    try:
        deadline = time.monotonic() + 30
        while not query(pg_database, "SELECT 1 FROM pg_locks WHERE locktype='advisory' AND"
                        f" classid={IDENTITY_LOCK} AND objsubid=2"):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = broker(pg_database, "twin")
        out, err = second.communicate(timeout=30)
        assert second.returncode != 0
        error = json.loads(out)
        assert error["error"] == "CONFLICT" and "identity 'twin'" in error["message"]
        assert "Traceback" not in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_serve_refuses_what_it_cannot_serve(pg_database: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def refused(*args: str) -> dict[str, Any]:
        assert cli(["serve", *args, "--json", "--for", "5"]) != 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return json.loads(captured.out)

    sqlite = tmp_path / "libos.db"
    assert refused("--db", str(sqlite))["error"] == "INVALID_ARGUMENT"
    assert not sqlite.exists()
    gone = refused("--db", "postgresql://nobody:secret@127.0.0.1:1/none", "--broker", "b")
    assert gone["error"] == "CONFLICT" and "cannot reach" in gone["message"]
    assert "secret" not in gone["message"]
    assert refused("--db", pg_database, "--broker", "no spaces")["error"] == "INVALID_ARGUMENT"
    assert refused("--db", pg_database, "--lease", "0")["error"] == "INVALID_ARGUMENT"
    # Nothing was made by any of them: the database has no broker's records.
    assert query(pg_database, "SELECT to_regclass('audit')")[0][0] is None
