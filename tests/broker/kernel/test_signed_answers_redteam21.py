"""Red team 21 (HIGH): an answer to an approval request written through the store is a
person's only if signed by a key the broker trusts, for this store and this very request, and
applied once (`broker.kernel.approval_answers`). A database writer (no key) forges an answer,
moves a signed one onto another request, and replays one after setting its request back to
pending; each is refused, the request pending again, on the record (`via: store`). The
neighbours: the same person's signed answer (`answer_in_store`, as `libos approve` and `libos
web` write it) is applied; `libos approve` with no key is one typed line."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from broker import ApprovalDenied, Cancelled, Kernel, NotCapable
from broker.approvals.stored import answer_in_store
from broker.store import AuditRecord, SQLiteStore, answer_sig
from broker.store.audit import GENESIS, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.connection import dump_json
from broker.store.keys import KEY_ENV, AuditKey
from tests.broker.kernel.test_labels import SECRET_READ, _agent, _tree
from tests.broker.store.conftest import raw

ASK = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "ask"}}
ANSWERED = ("state", "answer", "who", "scope", "value", "answered", "sig")


@asynccontextmanager
async def _exporting(db_path: Path, tmp_path: Path, *names: str
                     ) -> AsyncIterator[tuple[Kernel, Path, list[dict[str, Any]], list[str]]]:
    """A broker whose agent read a secret and asks to export it to each of `names` (flow
    bound `ask`), the requests pending; yields the kernel, the fs root, the requests (in the
    order of `names`) and the names written so far."""
    async with Kernel.open(db_path, fs_root=tmp_path / "fs") as kernel:
        root = _tree(kernel)
        pid = await _agent(kernel, SECRET_READ, ASK)
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        done: list[str] = []

        async def export(name: str) -> None:
            try:
                await kernel.call_tool(pid, "write_file", {"path": f"/exports/{name}",
                                                           "data": token})
            except (ApprovalDenied, NotCapable, Cancelled):
                return
            done.append(name)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(export, name)
                with trio.fail_after(5):
                    while len(kernel.approvals()) < len(done) + names.index(name) + 1:
                        await trio.sleep(0.01)
            yield kernel, root, kernel.approvals(), done
            nursery.cancel_scope.cancel()


def _write(db_path: Path, approval_id: str, fields: dict[str, Any]) -> None:
    """The database writer sets a request's columns itself."""
    sets = ", ".join(f"{k}=?" for k in fields)
    with raw(db_path) as db:
        db.execute(f"UPDATE approvals SET {sets} WHERE id=?", (*fields.values(), approval_id))


async def _refused(kernel: Kernel, approval_id: str, error: str) -> dict[str, Any]:
    """The answer's refusal on the record, and the request pending again."""
    with trio.fail_after(10):
        while not (found := [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                             and r["phase"] == "rejected"
                             and r["detail"].get("request") == approval_id]):
            await trio.sleep(0.05)
    [record] = found
    assert record["detail"]["via"] == "store" and record["detail"]["error"] == error, record
    row = kernel.store.get_approval(approval_id)
    assert (row["state"], row["answer"], row["sig"], row["applied"]) == (
        "pending", None, None, None)
    return record


def _signed_for(kernel: Kernel, request: dict[str, Any]) -> dict[str, Any]:
    """A real answer `once` to `request`, signed by the user's own key (as `libos approve`
    signs it), not written anywhere yet."""
    row = {**kernel.store.get_approval(request["id"]), "state": "approved", "answer": "once",
           "who": "cli:ops", "scope": None, "value": None, "answered": time.time()}
    row["sig"] = answer_sig.sign(AuditKey.open(), kernel.store.identity, row)
    return {k: row[k] for k in ANSWERED}


async def test_an_unsigned_answer_is_refused_and_a_signed_one_then_applied(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        _write(db_path, request["id"], {"state": "approved", "answer": "once", "who": "cli",
                                        "answered": time.time()})
        record = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "not signed" in record["detail"]["message"]
        await trio.sleep(0.5)  # (the waiting call waits on, the writer's answer unapplied)
        assert not done and not (root / "exports" / "t").exists()
        # The neighbour: the person answers, signed, through the store.
        answer_in_store(SQLiteStore(db_path, writer=False), request["id"], "once",
                        who="cli:ops", now=time.time())
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
    assert (root / "exports" / "t").read_text() == "tok-123"


async def test_a_request_a_writer_marks_applied_is_refused(
        db_path: Path, tmp_path: Path) -> None:
    """`applied` is a column too: a mark the chain does not back is no answer (a question's
    value would be handed to its waiting call so, once woken: by its deadline, or in shared
    mode by the sweep's look at settled requests, which the test stands in for)."""
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        _write(db_path, request["id"], {"state": "approved", "answer": "once", "who": "cli",
                                        "answered": time.time(), "applied": time.time()})
        kernel.queue._wake(request["id"])
        record = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "marked applied" in record["detail"]["message"]
        assert not done
    assert not (root / "exports" / "t").exists()


async def test_an_answer_moved_onto_another_request_is_refused(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "a", "b") as (kernel, root, requests, done):
        by_path = {r["resource"]: r for r in requests}
        first, second = by_path["/exports/a"], by_path["/exports/b"]
        signed = _signed_for(kernel, first)
        _write(db_path, second["id"], signed)  # the writer moves a's answer onto b
        record = await _refused(kernel, second["id"], "NOT_CAPABLE")
        assert "does not hold" in record["detail"]["message"]
        _write(db_path, first["id"], signed)  # the same answer where it was given: applied
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
        assert done == ["a"] and kernel.store.get_approval(second["id"])["state"] == "pending"
    assert not (root / "exports" / "b").exists()


async def test_a_signed_answer_replayed_after_a_reset_is_refused(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        answer_in_store(SQLiteStore(db_path, writer=False), request["id"], "once",
                        who="cli:ops", now=time.time())
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
        used = {k: kernel.store.get_approval(request["id"])[k] for k in ANSWERED}
        (root / "exports" / "t").unlink()
        # The writer sets the request back to pending, unapplied; the same call is asked again
        # (it files a new request: one the chain records answered is never resumed, red team
        # 24), and the old signed answer is written back.
        _write(db_path, request["id"], {**{k: None for k in ANSWERED}, "state": "pending",
                                        "applied": None, "grant_id": None})
        pid, token = request["pid"], "tok-123"
        again: list[Any] = []

        async def export() -> None:
            try:
                again.append(await kernel.call_tool(pid, "write_file",
                                                    {"path": "/exports/t", "data": token}))
            except (ApprovalDenied, NotCapable) as exc:
                again.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(export)
            await trio.sleep(0.3)
            assert len(kernel.approvals()) == 2  # (the old one, and the call's new one)
            _write(db_path, request["id"], used)
            record = await _refused(kernel, request["id"], "CONFLICT")
            assert "answered before" in record["detail"]["message"]
            await trio.sleep(0.5)
            assert not again
            nursery.cancel_scope.cancel()
    assert not (root / "exports" / "t").exists()


async def test_libos_approve_without_a_key_is_one_typed_line(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, _root, [request], done):
        env = {**os.environ, KEY_ENV: str(tmp_path / "nobody" / "audit.key")}
        ran = await trio.run_process(
            [sys.executable, "-m", "broker.cli", "approve", request["id"], "--db",
             str(db_path)], capture_stdout=True, capture_stderr=True, check=False, env=env)
        err = ran.stderr.decode()
        assert ran.returncode != 0 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and err.startswith(
            "NOT_FOUND: no audit key at"), err
        assert kernel.store.get_approval(request["id"])["state"] == "pending"
        assert not done and not (tmp_path / "nobody").exists()


async def test_a_writers_own_record_of_an_answer_applied_backs_no_mark(
        db_path: Path, tmp_path: Path) -> None:
    """The mark `applied` with a record of the writer's own beside it: an `approval.answer`
    admin row naming the request, inserted anywhere in `audit` (its hash unkeyed, its seq the
    writer's choice). No record this broker did not write and the chain does not vouch for
    backs the mark."""
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        record = AuditRecord(phase="admin", syscall="approval.answer",
                             detail={"request": request["id"]})
        detail = dump_json(record.detail)
        with raw(db_path) as db:
            seq = 10**9
            db.execute(INSERT_AUDIT, (seq, time.time(), None, None, None, "admin",
                                      "approval.answer", request["id"], None, None, detail,
                                      GENESIS, record_hash(seq, 0.0, record, detail, GENESIS),
                                      None))
        _write(db_path, request["id"], {"state": "approved", "answer": "once", "who": "cli",
                                        "answered": time.time(), "applied": time.time()})
        kernel.queue._wake(request["id"])
        record_ = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "marked applied" in record_["detail"]["message"]
        assert not done
    assert not (root / "exports" / "t").exists()
