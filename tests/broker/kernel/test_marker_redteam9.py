"""Red team 9 on lane sharedvouch's `audit.signed` marker: from the chain's first marker on,
a vouching record counts only signed by a trusted key; before it, as an older broker's. The
attacker (writing the PostgreSQL rows with plain SQL, holding no key) deletes the marker row
and appends an unsigned grant of a planted `fs:/**` read row at the head. The deleted row
breaks one link, but the forgery after it is whole to the head, and with no marker nothing
asked for its signature: the planted row granted (HIGH). The same in its quiet form: the
chain rewritten from before the marker (the marker made another record, everything after it
hashed again: no link broken).

Fixed: each shared broker remembers the first marker it found outside the database, in its
key's directory (`broker.store.marked`). At a shared open, a marker remembered and missing or
moved is noted once (a signed `caps.unsigned` note naming it), and the records that vouch
from the remembered seq on count only signed by a trusted key: the forged grant grants
nothing, while a grant the broker makes itself holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.caps.capability import Capability
from broker.store import marked
from broker.store.audit import GENESIS, AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.capvouch import CAP_DIGESTS, cap_digest
from broker.store.connection import dump_json
from broker.store.opening import open_store
from broker.store.recordsig import MARKER, UNSIGNED
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_ends_signed_redteam9 import spawned_by_a
from tests.broker.store.conftest import raw


def _forge_grant_raw(dsn: str, pid: int) -> int:
    """`forge_grant` with plain SQL (no broker's open, no key): its seq."""
    cap = Capability(kind="fs", scope="/**", rights=frozenset({"read"}), owner=pid,
                     id="cap_forged")
    record = AuditRecord(phase="admin", syscall="approval.answer", pid=pid,
                         detail={CAP_DIGESTS: [cap_digest("h_forged", cap)]})
    detail = dump_json(record.detail)
    with raw(dsn) as db:
        seq, prev = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                               ).fetchone()
        seq += 1
        db.execute(INSERT_AUDIT, (seq, 1.0, pid, None, None, "admin", "approval.answer", None,
                                  None, None, detail, prev,
                                  record_hash(seq, 1.0, record, detail, prev), None))
        db.execute("INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
                   " created) VALUES (?,?,?,?,?,?,?,?)",
                   ("cap_forged", pid, "h_forged", "fs", "/**", "read", "allow", 0.0))
    return seq


def _marker(dsn: str) -> tuple[int, str]:
    with raw(dsn) as db:
        return tuple(db.execute("SELECT seq, hash FROM audit WHERE syscall=?", (MARKER,)
                                ).fetchone())


def _delete_marker(dsn: str) -> None:
    with raw(dsn) as db:
        db.execute("DELETE FROM audit WHERE syscall=?", (MARKER,))


def _rewrite_from_marker(dsn: str) -> None:
    """The marker made another record and every record from it on hashed again (linked:
    no broken link; the signatures, over the old hashes, left as they were)."""
    s = open_store(dsn, writer=False)
    try:
        rows = list(s.audit_records())
    finally:
        s.close()
    at = next(i for i, r in enumerate(rows) if r.record.syscall == MARKER)
    prev = rows[at - 1].hash if at else GENESIS
    with raw(dsn) as db:
        for r in rows[at:]:
            record = replace(r.record, syscall="audit.note") if r.record.syscall == MARKER \
                else r.record
            digest = record_hash(r.seq, r.ts, record, r.detail_json, prev)
            db.execute("UPDATE audit SET syscall=?, prev_hash=?, hash=? WHERE seq=?",
                       (record.syscall, prev, digest, r.seq))
            prev = digest


def _moved_notes(kernel: Kernel) -> list[object]:
    return [r["detail"]["marker"] for r in kernel.audit()
            if r["syscall"] == UNSIGNED and "marker" in r["detail"]]


@pytest.mark.parametrize("attack", [_delete_marker, _rewrite_from_marker])
async def test_a_grant_forged_after_the_marker_was_deleted_grants_nothing(
        pg_database: str, fs: Path, attack: Callable[[str], None]) -> None:  # noqa: F811
    pid = await spawned_by_a(pg_database, fs)
    marker = _marker(pg_database)
    attack(pg_database)
    _forge_grant_raw(pg_database, pid)
    for broker in ("b", "c"):  # (noted once: the next open's walk reads the note)
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
            assert "cap_forged" not in {c["id"] for c in kernel.capabilities(pid)}
            assert _moved_notes(kernel) == [list(marker)]
            assert any(line.startswith(f"record {marker[0]}: this broker found the chain's")
                       for line in kernel.verify_audit()[1])
            own = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
            assert await kernel.call_tool(own, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_store_marked_at_its_first_open_is_remembered_not_flagged(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """The neighbour: a store never marked, opened by shared brokers for the first time, is
    not flagged; the marker this open appended is what is remembered."""
    pid = await spawned_by_a(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert _moved_notes(kernel) == []
        assert not [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
        assert kernel.verify_audit()[1] == []
        memory = kernel.store.marker_memory
    assert marked.recall(memory) == _marker(pg_database)


async def test_a_grant_forged_with_the_marker_in_place_grants_nothing(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """The neighbour: the same forgery, the marker left alone, grants nothing, and a grant
    broker b makes itself holds."""
    pid = await spawned_by_a(pg_database, fs)
    _forge_grant_raw(pg_database, pid)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
        own = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        assert await kernel.call_tool(own, "read_file", {"path": "/data/pub/f"}) == "pub"
