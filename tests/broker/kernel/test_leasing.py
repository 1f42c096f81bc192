"""Two brokers over one PostgreSQL store, in one trio run: a process whose broker closed is
taken by the other and finishes from its checkpoint; a broker whose lease was taken (as if
it froze past the expiry) has its process's next write refused by fencing, gives the process
up, and the other broker finishes it; a broker identity is one broker; and SQLite refuses
an identity."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Conflict, InvalidArgument, Kernel, NotCapable
from broker.cli import main as cli
from broker.kernel import approvals, notices, recent
from broker.kernel.image import AgentImage
from broker.planner import Exit
from broker.store.audit import AuditRecord
from broker.store.opening import open_store
from broker.store.postgres import DuplicateBroker, PostgresStore
from tests.broker.store.conftest import raw

NEEDS = ("fs:/**:read,write", "clock:*:read,sleep")


def script(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "scripted", "actions": list(actions)}


class Parked:
    """A planner that never acts: the process waits for a broker that builds its planner
    from its image."""

    async def next_action(self, history: Any) -> Exit:
        await trio.sleep_forever()
        raise AssertionError


async def _until(check: Any, seconds: float = 15) -> None:
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.02)


def _steps(dsn: str, pid: int, syscall: str) -> int:
    with raw(dsn) as db:
        return db.execute("SELECT COUNT(*) FROM audit WHERE pid=? AND syscall=? AND"
                          " phase='intent'", (pid, syscall)).fetchone()[0]


async def test_a_process_left_by_a_closed_broker_is_taken_and_finishes(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("worker", tools=("write_file",), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/a.txt", "data": "one"}},
        {"tool": "write_file", "args": {"path": "/b.txt", "data": "two"}}))
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           planners=lambda image, pid: Parked()) as a:
        await a.register_image(image)
        pid = a.spawn("worker", caps=["fs:/**:read,write"])
        assert a.leasing.mine(pid) and a.store.lease_of(pid).holder == "a"
    # Closed: its lease was given back at once (not left to expire).
    assert open_store(pg_database, writer=False).lease_of(pid).expires == 0
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b:
        with trio.fail_after(15):
            status = await b.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0
        assert b.store.lease_of(pid).holder == "b"
        assert (tmp_path / "fs" / "b.txt").read_text() == "two"
        count, problems = b.store.audit_problems()
        assert problems == [] and count > 0
    assert _steps(pg_database, pid, "fs.write") == 2  # each once: nothing repeated


async def test_a_broker_that_lost_its_lease_is_fenced_and_gives_the_process_up(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("sleeper", tools=("sleep", "write_file"), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/before.txt", "data": "x"}},
        {"tool": "sleep", "args": {"seconds": 1.0}},
        {"tool": "write_file", "args": {"path": "/after.txt", "data": "y"}}))
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a:
        await a.register_image(image)
        pid = a.spawn("sleeper", caps=["fs:/**:read,write", "clock:*:sleep"])
        await _until(lambda: (tmp_path / "a" / "before.txt").exists())
        await trio.sleep(0.2)  # in its sleep now
        # Broker a "froze" past its lease: it expired, and broker b takes the process.
        with raw(pg_database) as db:
            db.execute("UPDATE leases SET expires=0 WHERE pid=?", (pid,))
        async with Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
            await _until(lambda: b.leasing.mine(pid))
            # a wakes: its next write for the process (the sleep's outcome) is refused.
            await _until(lambda: pid in dict(a.leasing.given_up))
            assert "lease 1" in dict(a.leasing.given_up)[pid]
            assert a.loaded(pid) is None and not a.leasing.mine(pid)
            with trio.fail_after(15):
                status = await b.wait(pid)
            assert status["state"] == "exited" and status["exit_code"] == 0
    assert not (tmp_path / "a" / "after.txt").exists()
    assert (tmp_path / "b" / "after.txt").read_text() == "y"
    assert _steps(pg_database, pid, "fs.write") == 2
    with raw(pg_database) as db:  # the sleep a cut off is closed as unknown by b
        unknown = db.execute("SELECT COUNT(*) FROM audit WHERE pid=? AND phase='outcome' AND"
                             " detail LIKE '%OUTCOME_UNKNOWN%'", (pid,)).fetchone()[0]
    assert unknown >= 1


async def test_one_identity_is_one_broker(pg_database: str, tmp_path: Path) -> None:
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="same") as a:
        with pytest.raises(DuplicateBroker, match="identity 'same'"):
            async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="same"):
                pass
        # A neighbour with another identity opens beside it.
        async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="other") as b:
            assert a.leasing.active and b.leasing.active
    with pytest.raises(InvalidArgument, match="identity"):
        async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="no spaces"):
            pass


async def test_sqlite_takes_no_identity(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="PostgreSQL"):
        async with Kernel.open(tmp_path / "libos.db", broker="a"):
            pass
    assert not (tmp_path / "libos.db").exists()


@pytest.mark.parametrize("told", [True, False], ids=["notified", "polled"])
async def test_an_approval_answered_on_another_broker_resumes_the_waiting_call(
        pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, told: bool) -> None:
    if told:  # no poll for a minute: only the store's notice can wake the call in time
        monkeypatch.setattr(approvals, "POLL_SECONDS", 60.0)
    else:  # notices lost (the listener down): the poll still gets there
        monkeypatch.setattr(notices, "WAIT", 0.05)
        monkeypatch.setattr(PostgresStore, "wait_for_notice",
                            lambda self, timeout: time.sleep(timeout) or [])
    image = AgentImage("asker", tools=("write_file",), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/out/r.txt", "data": "report"}}))
    (tmp_path / "a" / "out").mkdir(parents=True)
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a, \
            Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
        await a.register_image(image)
        pid = a.spawn("asker", caps=[{"kind": "fs", "scope": "/out/**", "rights": ["write"],
                                      "effect": "ask"}])
        await _until(lambda: b.approvals())  # b lists a's request, from the store
        [request] = b.approvals()
        assert request["pid"] == pid
        assert cli(["approvals", "--json", "--db", pg_database]) == 0  # and so does the CLI
        assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [request["id"]]
        answered = trio.current_time()
        b.approve(request["id"])  # on broker b; the call waits on broker a
        with trio.fail_after(15):
            status = await a.wait(pid)
        assert trio.current_time() - answered < 2  # woken by a's poll, not by a deadline
        assert status["state"] == "exited" and status["exit_code"] == 0
        assert (tmp_path / "a" / "out" / "r.txt").read_text() == "report"
        assert not b.leasing.mine(pid) and b.loaded(pid) is None  # b never ran it
        granted = [r for r in a.audit(pid) if r["syscall"] == "approval.answer"
                   or r.get("phase") == "admin"]
        assert granted  # the grant is in the chain, once
        _, problems = a.store.audit_problems()
        assert problems == []


async def test_a_one_shot_grant_is_spent_once_across_three_brokers(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("once", tools=("write_file",), needs=NEEDS, planner={})
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a") as a, \
            Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b, \
            Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="c") as c:
        await a.register_image(image)
        pid = a.spawn("once", caps=[{"kind": "fs", "scope": scope, "rights": ["write"],
                                     "uses": 1} for scope in ("/once.txt", "/raced.txt")])
        results: list[Any] = []

        async def attempt(kernel: Kernel, n: int) -> None:
            try:
                results.append(await kernel.call_tool(pid, "write_file", {
                    "path": "/once.txt", "data": f"{kernel.leasing.identity}{n}"}))
            except Exception as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(attempt, (a, b, c)[n % 3], n)
        ok = [r for r in results if not isinstance(r, Exception)]
        assert len(results) == 100 and len(ok) == 1
        assert all(isinstance(r, NotCapable | Conflict) for r in results
                   if isinstance(r, Exception))
        assert (tmp_path / "fs" / "once.txt").read_text().startswith("a")
        # Under the kernels, the stores race on a capability's row: 100 spends from three
        # brokers' connections at once, one succeeds.
        [cap] = [cap for _, cap in a.store.load_capabilities() if cap.scope == "/raced.txt"]
    stores = [open_store(pg_database, broker=f"s{i}") for i in range(3)]
    try:
        wins: list[int] = []

        def spend(store: Any) -> None:
            with contextlib.suppress(Conflict):
                wins.append(store.append_audit(AuditRecord(
                    phase="intent", syscall="fs.write", pid=pid, cap_id=cap.id), spend=cap))

        threads = [threading.Thread(target=spend, args=(stores[i % 3],)) for i in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1
        for store in stores:
            store.sign_anchor()  # (a kernel signs its head every moment; bare stores, here)
        _, problems = stores[0].audit_problems()
        assert problems == []
    finally:
        for store in stores:
            store.close()


async def test_a_dropped_connection_is_made_again_and_the_work_goes_on(
        pg_database: str, tmp_path: Path) -> None:
    nap = {"tool": "sleep", "args": {"seconds": 0.3}}
    image = AgentImage("napper", tools=("sleep",), needs=NEEDS, planner=script(*[nap] * 6))
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           lease_ttl=1.0) as a:
        await a.register_image(image)
        pid = a.spawn("napper", caps=["clock:*:sleep"])
        await _until(lambda: len(a.store.observations(pid)) >= 2)
        with raw(pg_database) as db:  # the network drops a's session
            [(ended,)] = [tuple(r) for r in db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                " application_name=?", ("libos broker a",)).fetchall()]
        assert ended
        # Whichever of its tasks meets the broken connection first (a process's: that process
        # is given up, and taken back once its lease expires; a watcher's: it logs), the
        # broker connects again and goes on: the process ends, each step once.
        with trio.fail_after(20):
            while a.loaded(pid) is None or a.loaded(pid).alive:
                await trio.sleep(0.05)
        assert a.loaded(pid).exit_code == 0
        assert [o["step"] for o in a.store.observations(pid)] == list(range(6))
        with raw(pg_database) as db:  # every intent has one outcome
            intents, outcomes, distinct = db.execute(
                "SELECT (SELECT COUNT(*) FROM audit WHERE phase='intent'), COUNT(*),"
                " COUNT(DISTINCT detail::json->>'intent') FROM audit WHERE phase='outcome'"
            ).fetchone()
        assert intents == outcomes == distinct
        _, problems = a.store.audit_problems()
        assert problems == []


async def test_one_chain_from_brokers_writing_at_once_verifies_and_tampering_is_named(
        pg_database: str, tmp_path: Path) -> None:
    steps = [{"tool": "now", "args": {}}] * 15
    image = AgentImage("ticker", tools=("now",), needs=NEEDS, planner=script(*steps))
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a, \
            Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
        await a.register_image(image)
        pids = [k.spawn("ticker", caps=["clock:*:read"]) for k in (a, b, a, b)]
        with trio.fail_after(30):
            for pid in pids:
                await (a if a.leasing.mine(pid) else b).wait(pid)
    with raw(pg_database) as db:  # both brokers' records interleave in the one chain
        owners = [r[0] for r in db.execute(
            "SELECT pid FROM audit WHERE phase IN ('intent', 'intent+outcome')"
            " AND syscall='tool.call' ORDER BY seq").fetchall()]  # (a step's call: whole)
        last = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    assert len({owners[i] for i in range(10)}) > 1

    def problems() -> list[str]:
        store = open_store(pg_database, writer=False)
        try:
            return store.audit_problems()[1]
        finally:
            store.close()

    assert problems() == []
    columns = "seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail," \
              " prev_hash, hash, payload, sig"  # (sig: a record that vouches is signed)

    def rows(where: str) -> list[tuple[Any, ...]]:
        with raw(pg_database) as db:
            return [tuple(r) for r in db.execute(f"SELECT {columns} FROM audit WHERE {where}"
                                                 " ORDER BY seq").fetchall()]

    def put_back(saved: list[tuple[Any, ...]]) -> None:
        with raw(pg_database) as db:
            for row in saved:
                db.execute("DELETE FROM audit WHERE seq=?", (row[0],))
                db.execute(f"INSERT INTO audit({columns}) VALUES ({','.join('?' * len(row))})", row)
        assert problems() == []

    middle = last // 2
    saved = rows(f"seq IN ({middle}, {middle + 1})")
    with raw(pg_database) as db:  # an edit
        db.execute("UPDATE audit SET detail='{\"ok\":true}' WHERE seq=?", (middle,))
    assert any(p.startswith(f"record {middle}:") for p in problems())
    put_back(saved)
    with raw(pg_database) as db:  # a deletion
        db.execute("DELETE FROM audit WHERE seq=?", (middle,))
    assert problems()
    put_back(saved)
    with raw(pg_database) as db:  # a reordering: two records swap places
        db.execute("UPDATE audit SET seq=-1 WHERE seq=?", (middle,))
        db.execute("UPDATE audit SET seq=? WHERE seq=?", (middle, middle + 1))
        db.execute("UPDATE audit SET seq=? WHERE seq=-1", (middle + 1,))
    assert problems()
    put_back(saved)
    tail = rows(f"seq > {last - 3}")
    with raw(pg_database) as db:  # a tail cut off
        db.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
    found = problems()
    assert any("missing" in p and "removed from the end" in p for p in found), found
    put_back(tail)


async def test_a_host_call_on_a_process_another_broker_took_writes_nothing(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("hosted", tools=("now",), needs=NEEDS)
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a",
                           lease_ttl=30) as a:
        await a.register_image(image)
        pid = a.spawn("hosted", caps=["clock:*:read"])
        assert isinstance(await a.call_tool(pid, "now", {}), float)
        a.leasing.tick = lambda: None  # type: ignore[method-assign]  # a's renewals stall
        with raw(pg_database) as db:  # ... past its lease ...
            db.execute("UPDATE leases SET expires=0 WHERE pid=?", (pid,))
        async with Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
            await _until(lambda: b.leasing.mine(pid))  # ... and b took the process
            before = a.store.last_seq()
            with pytest.raises(Conflict, match="taken by another broker"):
                await a.call_tool(pid, "now", {})  # a, not knowing yet, is fenced
            assert a.store.last_seq() == before and a.loaded(pid) is None
            assert pid in dict(a.leasing.given_up)
            assert isinstance(await b.call_tool(pid, "now", {}), float)  # b runs it
            _, problems = b.store.audit_problems()
            assert problems == []


async def test_pause_and_kill_from_the_cli_reach_the_broker_that_runs_the_process(
        pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nap = {"tool": "sleep", "args": {"seconds": 0.2}}
    image = AgentImage("napper", tools=("sleep",), needs=NEEDS, planner=script(*[nap] * 50))
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a, \
            Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
        await a.register_image(image)
        pid = a.spawn("napper", caps=["clock:*:sleep"])
        await _until(lambda: a.store.observations(pid))

        def control(verb: str) -> dict[str, Any]:
            assert cli([verb, str(pid), "--db", pg_database, "--json", "--wait", "5"]) == 0
            return json.loads(capsys.readouterr().out)

        paused = await trio.to_thread.run_sync(control, "pause")
        assert paused["applied"]
        await _until(lambda: a.loaded(pid).state.value == "paused")  # at its step boundary
        steps = len(a.store.observations(pid))
        await trio.sleep(0.5)
        assert len(a.store.observations(pid)) == steps  # held at its step boundary
        killed = await trio.to_thread.run_sync(control, "kill")
        assert killed["applied"] and killed["state"] == "killed"
        assert b.loaded(pid) is None and not b.leasing.mine(pid)  # b never touched it
        acts = [r["syscall"] for r in a.audit(pid) if r["phase"] == "admin"]
        assert acts.count("proc.signal") == 2  # the pause and the kill, each audited once


async def test_what_a_broker_remembers_of_ended_processes_is_bounded(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`leasing.ended` (and `given_up`) grew by a process for every one that ended (or was
    given up) for the kernel's life. Now the newest `KEEP_RECENT` are kept, and a total
    counts them all (what `libos serve` reports)."""
    monkeypatch.setattr(recent, "KEEP_RECENT", 3)
    image = AgentImage("quick", tools=(), needs=(), planner=script())
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           lease_ttl=0.6) as a:
        await a.register_image(image)
        pids = [a.spawn("quick", caps=[]) for _ in range(5)]
        for pid in pids:
            with trio.fail_after(15):
                assert (await a.wait(pid))["state"] == "exited"
        await _until(lambda: a.leasing.ended.total == 5)
        assert list(a.leasing.ended) == pids[-3:]
        assert a.leasing.given_up.total == 0 and not list(a.leasing.given_up)
