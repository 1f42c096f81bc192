"""Red team 11 on the remembered marker (`broker.store.marked`): records before the chain's
first `audit.signed` marker are an older store's, taken unsigned. A shared broker that
remembers the marker (M, hash) notes it moved when the record at M no longer is it, and from
M on requires signatures. But the marker's hash covers every record before it (each hash
takes the one before): a marker moved or hashed anew means the records before it were
rewritten too, and they still vouched unsigned.

The attacker (plain SQL, no key) writes a forged grant over an older record just before the
marker (a tool call's) and hashes everything after it again: the marker keeps its seq, not
its hash. The memory notes it moved, and the forged grant, below M, vouched as an older
broker's (HIGH: the memory caught the rewrite and let its forgery through).

Fixed: the remembered marker moved or hashed anew, the vouching records before it count
only signed too (failing closed: an older store's genuine grants there then hold nothing,
as the genuine ones after it a rewrite hashed again).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.caps.capability import Capability
from broker.store.audit import GENESIS, AuditRecord, record_hash
from broker.store.capvouch import CAP_DIGESTS, cap_digest
from broker.store.connection import dump_json
from broker.store.opening import open_store
from broker.store.recordsig import MARKER, SIGNS, UNSIGNED
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.store.conftest import raw
from tests.conftest import open_image


def _records(dsn: str) -> list:  # type: ignore[type-arg]
    s = open_store(dsn, writer=False)
    try:
        return list(s.audit_records())
    finally:
        s.close()


def forge_over(dsn: str, at: int, forged: AuditRecord) -> None:
    """`forged` written over the record at `at`, every record from there hashed again (no
    link broken)."""
    rows = _records(dsn)
    prev = next((r.hash for r in reversed(rows) if r.seq < at), GENESIS)
    with raw(dsn) as db:
        for r in (r for r in rows if r.seq >= at):
            record, detail = r.record, r.detail_json
            if r.seq == at:
                record, detail = forged, dump_json(forged.detail)
            digest = record_hash(r.seq, r.ts, record, detail, prev)
            db.execute("UPDATE audit SET pid=?, inv=?, tool=?, phase=?, syscall=?,"
                       " resource=?, args_hash=?, cap_id=?, detail=?, prev_hash=?, hash=?"
                       " WHERE seq=?", (record.pid, record.inv, record.tool, record.phase,
                                        record.syscall, record.resource, record.args_hash,
                                        record.cap_id, detail, prev, digest, r.seq))
            prev = digest


def _forge_before_marker(dsn: str, pid: int) -> int:
    """A forged grant of a planted `fs:/**` read row to `pid`, written over the record just
    before the marker (one that vouches for nothing: a tool call's), and every record from
    there hashed again (no link broken; the marker keeps its seq, not its hash)."""
    rows = _records(dsn)
    at = next(r.seq for r in rows if r.record.syscall == MARKER) - 1
    assert next(r for r in rows if r.seq == at).record.syscall not in SIGNS
    cap = Capability(kind="fs", scope="/**", rights=frozenset({"read"}), owner=pid,
                     id="cap_forged")
    forged = AuditRecord(phase="admin", syscall="approval.answer", pid=pid,
                         detail={CAP_DIGESTS: [cap_digest("h_forged", cap)]})
    with raw(dsn) as db:
        db.execute("INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
                   " created) VALUES (?,?,?,?,?,?,?,?)",
                   ("cap_forged", pid, "h_forged", "fs", "/**", "read", "allow", 0.0))
    forge_over(dsn, at, forged)
    return at


async def test_a_grant_inserted_before_a_remembered_marker_grants_nothing(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    async with Kernel.open(pg_database, fs_root=fs) as kernel:  # (an older, single writer)
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:  # marked: M
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    seq = _forge_before_marker(pg_database, pid)
    async with Kernel.open(pg_database, fs_root=fs, broker="c") as kernel:
        assert [r for r in kernel.audit()
                if r["syscall"] == UNSIGNED and "marker" in r["detail"]]  # (noted moved)
        assert seq < kernel.store.chain_links().signatures.remembered[0]
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})


async def test_an_older_store_s_grants_hold_while_the_remembered_marker_stands(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """The neighbour: the same older store, marked and remembered, nothing rewritten: its
    unsigned grants before the marker hold at every later open, and nothing is noted."""
    async with Kernel.open(pg_database, fs_root=fs) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    for broker in ("b", "c"):
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            assert not [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
            remembered = kernel.store.chain_links().signatures.remembered
    assert remembered is not None  # (c's open read the memory b's kept)
