"""The read of the records that vouch for capability rows (`broker.store.capvouch`) goes
through an index of those records alone (migrations 0008, 0009): it runs at every kernel open, every
resume and every `capabilities` asked of a process, and without it each scanned the whole
chain (tens of ms at 30,000 records, growing with the chain)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from broker.store.capvouch import VOUCHING
from broker.store.location import is_database
from broker.store.opening import open_store
from broker.store.processes import _VOUCHING_RECORDS
from tests.broker.store.conftest import raw

_MIGRATIONS = Path(__file__).parents[3] / "broker" / "store" / "migrations"


def test_the_index_names_exactly_the_records_that_vouch() -> None:
    # (a record kind added to VOUCHING and not to the index would be read by a scan again)
    for backend in ("sqlite", "postgres"):  # (the newest migration that makes it)
        made = [p for p in sorted((_MIGRATIONS / backend).glob("*.sql"))
                if "CREATE INDEX audit_vouching" in p.read_text()]
        condition = made[-1].read_text().split("CREATE INDEX audit_vouching")[1]
        assert re.findall(r"syscall = '([^']*)'", condition) == list(VOUCHING)


def test_the_vouching_records_are_read_through_the_index(store_at: Path | str) -> None:
    open_store(store_at).close()
    with raw(store_at) as db:
        if is_database(store_at):
            [(definition,)] = db.execute("SELECT indexdef FROM pg_indexes WHERE"
                                         " indexname='audit_vouching'").fetchall()
            assert all(f"'{name}'" in definition for name in VOUCHING), definition
            assert "ANY" not in definition.upper(), definition  # (an IN)
            return
        plan = " ".join(str(r[-1]) for r in db.execute(
            f"EXPLAIN QUERY PLAN {_VOUCHING_RECORDS}", ("%x%",)))
    assert "USING INDEX audit_vouching" in plan, plan


def test_appending_a_record_builds_no_temporary_btree_for_the_index(tmp_path: Path) -> None:
    """The index's condition is evaluated at every audit INSERT: as `syscall IN (...)` of
    more than two names SQLite built a temporary b-tree of them each time (OpenEphemeral),
    some 34k instructions a record under callgrind; OR'd equalities are compares."""
    open_store(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        columns = [r[1] for r in db.execute("PRAGMA table_info(audit)") if r[1] != "seq"]
        program = db.execute(f"EXPLAIN INSERT INTO audit ({', '.join(columns)}) VALUES"
                             f" ({', '.join('?' * len(columns))})", [None] * len(columns))
        opcodes = [row[1] for row in program]
    finally:
        db.close()
    assert "IdxInsert" in opcodes  # (the index is maintained: this is its program)
    assert "OpenEphemeral" not in opcodes, opcodes
