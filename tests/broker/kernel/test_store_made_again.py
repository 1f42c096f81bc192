"""A store removed and made again at the same address is another store (red team 19, DESIGN
invariant 10): a signed control request names the store it was made for by where it is AND
its chain's first record (`DurableState.identity`), so the operator's `libos kill 1` left
untaken in the old store, copied by a database writer into the new one (whose process 1 is
another), is refused, on SQLite and PostgreSQL. The real `libos kill` reads the identity
without a broker; its request to the new store is applied. A writer who copies the old first
record in too breaks the chain, and the copy is refused all the same."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.lifecycle import State
from broker.store.audit import CONTROL_RECORD
from broker.store.location import is_database
from broker.store.pg_connection import connect
from tests.broker.store.conftest import raw
from tests.conftest import open_image

COLUMNS = "verb, pid, created, arg, sig"
AUDIT = ("seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail, prev_hash,"
         " hash, payload, sig")


async def _libos_kill(store: Path | str, pid: int) -> str:
    """The operator's real `libos kill`, signed with this user's key, its answer waited for
    briefly (none: queued for the next broker)."""
    done = await trio.run_process(
        [sys.executable, "-m", "broker.cli", "kill", str(pid), "--db", str(store),
         "--wait", "0.2"], capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _last_request(store: Path | str) -> tuple[Any, ...]:
    with raw(store) as db:
        return tuple(db.execute(f"SELECT {COLUMNS} FROM control ORDER BY id DESC LIMIT 1"
                                ).fetchone())


def _insert(store: Path | str, row: tuple[Any, ...]) -> int:
    """The writer's copy of a saved row (no `libos` command)."""
    with raw(store) as db:
        return int(db.execute(f"INSERT INTO control({COLUMNS}) VALUES (?,?,?,?,?) RETURNING id",
                              row).fetchone()[0])


def _make_again(store: Path | str) -> None:
    """The store removed and a new one made at the same address: the file and those beside
    it, or the database dropped and created again under its name."""
    if not is_database(store):
        assert isinstance(store, Path)
        for made in store.parent.iterdir():
            if made.name.startswith(store.name):
                made.unlink()
        return
    server, _, name = str(store).rpartition("/")
    admin = connect(f"{server}/postgres", "admin")
    try:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    finally:
        admin.close()


async def _left_for_the_old_store(store: Path | str) -> tuple[int, tuple[Any, ...]]:
    """Process 1 of the old store, and the operator's signed kill of it, never taken (no
    broker held the store)."""
    async with Kernel.open(store) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
    assert "queued" in await _libos_kill(store, pid)
    return pid, _last_request(store)


def _refused(kernel: Kernel, request: int, pid: int, code: str, why: str) -> None:
    kernel.controls.apply()
    answer = kernel.store.control_result(request)
    assert answer is not None and answer.get("error") == code, answer
    assert why in answer["message"], answer
    [refusal] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
    assert refusal["phase"] == "rejected" and refusal["detail"]["error"] == code, refusal
    assert kernel.process_info(pid)["state"] != State.KILLED


async def old_request_refused_new_kill_applied(kernel: Kernel, store_at: Path | str,
                                               saved: Any, pid: int) -> None:
    """The old store's saved request, put in, is refused (another store); the neighbour:
    the operator's own `libos kill` of this store's process `pid` is applied."""
    _refused(kernel, _insert(store_at, saved), pid, "NOT_CAPABLE", "another store")
    said = await _libos_kill(store_at, pid)
    assert "queued" not in said, said
    assert kernel.process_info(pid)["state"] == State.KILLED


async def test_a_kill_left_for_the_store_once_at_this_address_is_refused(
        store_at: Path | str) -> None:
    pid, saved = await _left_for_the_old_store(store_at)
    _make_again(store_at)
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel)
        assert kernel.spawn("agent", caps=[]) == pid  # (another process 1)
        await old_request_refused_new_kill_applied(kernel, store_at, saved, pid)


async def test_the_old_first_record_copied_in_breaks_the_chain_and_is_refused(
        store_at: Path | str) -> None:
    """The writer makes the new store's first record the old one's (every column), so the
    saved request's store holds again: the next record's link breaks, which a request made
    within the window is refused on (lane ctlbreak), and `--verify` names."""
    pid, saved = await _left_for_the_old_store(store_at)
    with raw(store_at) as db:
        first = tuple(db.execute(f"SELECT {AUDIT} FROM audit ORDER BY seq LIMIT 1").fetchone())
    _make_again(store_at)
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel)
        assert kernel.spawn("agent", caps=[]) == pid
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq = ?", (first[0],))
        db.execute(f"INSERT INTO audit({AUDIT}) VALUES ({','.join('?' * len(first))})", first)
    async with Kernel.open(store_at) as kernel:
        assert kernel.verify_audit()[1]  # (the break is found)
        _refused(kernel, _insert(store_at, saved), pid, "CONFLICT",
                 "the audit chain is broken at record")
