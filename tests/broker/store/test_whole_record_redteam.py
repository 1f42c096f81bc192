"""Red team of the whole record (phase `intent+outcome`, issue #17's onerecord change): what a
tamperer can do to a chain that holds whole records beside old intent/outcome pairs, on both
backends. A real kernel writes the records, the kernel is closed, and the database is edited
behind its back; every verifier must name what was done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotCapable, NotFound
from broker.cli import main as cli_main
from broker.store.audit import GENESIS, WHOLE, AuditRecord, record_hash
from broker.store.export import export, verify_export
from broker.store.opening import open_store
from tests.broker.store.conftest import raw
from tests.broker.store.test_audit_chain import kernel_problems, problems_of, row, store_problems
from tests.broker.store.test_whole_record import read_directly


async def _calls(store_at: str | Path) -> dict[str, int]:
    """A kernel writes a read's whole record, a tool call to a name the process has not (no
    effect: one whole record that keeps its arguments, failed), a read through `read_file`
    (the call's whole record, then the read's) and, last, a refused read through `read_file`
    (a pair: the call's intent, chained by the denial, the denial, and the call's failed
    outcome). The seqs of what matters."""
    async with Kernel.open(store_at) as kernel:
        pid = await read_directly(kernel)
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "nosuch", {"text": "what was asked"})
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/etc/passwd"})
        records = kernel.audit(pid)
        assert kernel.verify_audit()[1] == []
    read = next(r["seq"] for r in records if r["phase"] == WHOLE and r["syscall"] == "fs.read"
                and r["inv"] is None)
    failed = next(r for r in records if r["syscall"] == "tool.call"
                  and r["resource"] == "nosuch" and r["phase"] in (WHOLE, "intent"))
    assert "payload_hash" in failed["detail"]
    return {"read": read, "failed_call": failed["seq"], "last": records[-1]["seq"]}


@pytest.fixture
async def calls(store_at: str | Path) -> dict[str, int]:
    return await _calls(store_at)


# -- the payload beside a whole record ----------------------------------------------------------


async def test_a_removed_argument_payload_of_a_failed_call_is_named(
        store_at: str | Path, calls: dict[str, int]) -> None:
    """A failed call that made no syscall keeps its arguments (its record vouches for them
    with `payload_hash`) and no result; its payload, removed, is named. (While effect-less
    calls were whole records too, a payload pair without a result went unchecked.)"""
    seq = calls["failed_call"]
    with raw(store_at) as db:
        db.execute("UPDATE audit SET payload=NULL WHERE seq=?", (seq,))
    assert problems_of(store_at) == []  # the chain itself is intact
    assert store_problems(store_at) == [
        f"record {seq}: its stored arguments payload is missing: removed"]
    assert await kernel_problems(store_at) == store_problems(store_at)


@pytest.mark.parametrize("how", ["trailing", "planted_on_read"])
async def test_an_edited_or_moved_payload_is_named(store_at: str | Path, calls: dict[str, int],
                                                  how: str) -> None:
    """The call's arguments with a byte more; or put beside the whole read, as its result."""
    seq = calls["read"] if how == "planted_on_read" else calls["failed_call"]
    with raw(store_at) as db:
        stored = bytes(row(db, calls["failed_call"])["payload"])
        edited = stored + b"\xc0" if how == "trailing" else stored
        db.execute("UPDATE audit SET payload=? WHERE seq=?", (edited, seq))
    problems = store_problems(store_at)
    assert len(problems) == 1 and problems[0].startswith(f"record {seq}: "), problems


@pytest.mark.parametrize("phase", ["intent", "outcome", "intent+outcome ", "INTENT+OUTCOME"])
async def test_a_whole_records_phase_cannot_be_changed(store_at: str | Path,
                                                       calls: dict[str, int],
                                                       phase: str) -> None:
    seq = calls["read"]
    with raw(store_at) as db:
        db.execute("UPDATE audit SET phase=? WHERE seq=?", (phase, seq))
    assert problems_of(store_at) == [f"record {seq}: content does not match its hash: edited"]


# -- rewriting the chain: a whole record as a pair, a pair as a whole record ----------------------


def _rechain(store_at: str | Path, rows: list[dict[str, Any]], start: int) -> None:
    """Put `rows` at `start`.. with every hash made again (a tamperer without the key)."""
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq>=?", (start,))
        prev = row(db, start - 1)["hash"] if start > 1 else GENESIS
        for seq, r in enumerate(rows, start):
            record = AuditRecord(r["phase"], r["syscall"], r["pid"], r["inv"], r["tool"],
                                 r["resource"], r["args_hash"], r["cap_id"],
                                 json.loads(r["detail"]))
            digest = record_hash(seq, r["ts"], record, r["detail"], prev)
            db.execute("INSERT INTO audit(seq, ts, pid, inv, tool, phase, syscall, resource,"
                       " args_hash, cap_id, detail, prev_hash, hash, payload)"
                       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (seq, r["ts"], r["pid"], r["inv"], r["tool"], r["phase"], r["syscall"],
                        r["resource"], r["args_hash"], r["cap_id"], r["detail"], prev, digest,
                        r["payload"]))
            prev = digest


def _tail(store_at: str | Path, start: int) -> list[dict[str, Any]]:
    with raw(store_at) as db:
        last = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        return [row(db, s) for s in range(start, last + 1)]


async def test_a_whole_record_split_into_a_pair_and_rechained_is_caught_by_the_anchor(
        store_at: str | Path, calls: dict[str, int]) -> None:
    """The whole read becomes the intent and outcome an older broker wrote, the rest of the
    chain hashed again: every link holds, so only the signed anchor can tell."""
    seq = calls["read"]
    rows = _tail(store_at, seq)
    whole = rows[0]
    detail = json.loads(whole["detail"])
    intent = {**whole, "phase": "intent", "payload": None,
              "detail": json.dumps({"args": detail["args"]}, sort_keys=True)}
    outcome_detail = {k: v for k, v in detail.items() if k != "args"}
    outcome = {**whole, "phase": "outcome", "cap_id": None,
               "detail": json.dumps({**outcome_detail, "intent": seq}, sort_keys=True)}
    _rechain(store_at, [intent, outcome, *rows[1:]], seq)
    assert problems_of(store_at) == []  # the links and hashes are all right
    problems = store_problems(store_at)
    assert problems and any("anchor" in p for p in problems), problems
    assert await kernel_problems(store_at)


async def test_a_pair_merged_into_a_whole_record_and_rechained_is_caught_by_the_anchor(
        store_at: str | Path, calls: dict[str, int]) -> None:
    """The other way: a refused read_file's intent and outcome made one record (a record
    dropped)."""
    last = calls["last"]
    rows = _tail(store_at, calls["read"])
    outcome = rows[-1]
    intent_seq = json.loads(outcome["detail"])["intent"]
    intent = next(r for r in rows if r["seq"] == intent_seq)
    merged = {**intent, "phase": WHOLE, "detail": json.dumps(
        {**json.loads(intent["detail"]),
         **{k: v for k, v in json.loads(outcome["detail"]).items() if k != "intent"}},
        sort_keys=True)}
    kept = [merged if r is intent else r for r in rows[:-1]]
    _rechain(store_at, kept, calls["read"])
    assert problems_of(store_at) == []
    problems = store_problems(store_at)
    assert any("anchor" in p for p in problems), problems
    with raw(store_at) as db:
        assert db.execute("SELECT MAX(seq) FROM audit").fetchone()[0] == last - 1


# -- export: a third party with the public key alone ----------------------------------------------


async def test_an_exported_chain_of_whole_records_verifies_and_an_edit_shows(
        store_at: str | Path, calls: dict[str, int], tmp_path: Path) -> None:
    store = open_store(store_at, writer=False)
    try:
        signer = store.read_anchor()[1]
        out = tmp_path / "audit.jsonl"
        count = export(store, out)
    finally:
        store.close()
    assert signer is not None and count >= calls["last"]
    assert verify_export(out, signer.key) == (count, [])
    lines = out.read_text().splitlines()
    seq = calls["read"]
    value = json.loads(lines[seq])
    assert value["phase"] == WHOLE
    detail = json.loads(value["detail"])
    detail["result"] = "evil"
    value["detail"] = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    lines[seq] = json.dumps(value)
    out.write_text("\n".join(lines) + "\n")
    _, problems = verify_export(out, signer.key)
    assert problems and problems[0].startswith(f"record {seq}:"), problems


# -- the CLI reads whole records -------------------------------------------------------------


async def test_the_cli_shows_exports_and_verifies_whole_records(
        store_at: str | Path, calls: dict[str, int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["audit", "--db", str(store_at), "--json"]) == 0
    shown = {r["seq"]: r for r in json.loads(capsys.readouterr().out)}
    read = shown[calls["read"]]
    assert read["phase"] == WHOLE and read["detail"]["args"] == {"path": "/data/a.txt"}
    assert read["detail"]["result"] == "hello" and "intent" not in read["detail"]
    assert cli_main(["audit", "--db", str(store_at)]) == 0  # (the table: wrapped to fit)
    assert "hello" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    assert cli_main(["audit", "--db", str(store_at), "--export", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["audit", "--verify", "--from", str(out)]) == 0
    capsys.readouterr()
    with raw(store_at) as db:  # the failed call's arguments, taken away
        db.execute("UPDATE audit SET payload=NULL WHERE seq=?", (calls["failed_call"],))
    assert cli_main(["audit", "--verify", "--db", str(store_at)]) == 1
    assert f"record {calls['failed_call']}" in capsys.readouterr().out
