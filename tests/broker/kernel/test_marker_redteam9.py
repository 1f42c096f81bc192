"""Red team 9 on lane sharedvouch's `audit.signed` marker: from the chain's first marker on,
a vouching record counts only signed by a trusted key; before it, as an older broker's. The
attacker (writing the PostgreSQL rows with plain SQL, holding no key) deletes the marker row
and appends an unsigned grant of a planted `fs:/**` read row at the head. The deleted row
breaks one link (at the record after the marker), which leaves the grants before the break
holding nothing, but the forgery after it is whole to the head, and with no marker nothing
asks for its signature (a shared open then appends a new marker, after it): the planted row
grants (HIGH: any writer of the rows reads everything, in every broker sharing the store).

Not fixed: it is the lazy form of DESIGN §9's "a chain rewritten from before its marker reads
as such an older store" (rehashing the records after the marker leaves no broken link at
all; the shared anchors then name the chain rewritten, yet grants are still taken). Refusing
unsigned vouching records after a broken link would close only this form; closing both needs
the marker known outside the database (each shared broker remembering, in its key's
directory, that the store is marked).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.caps.capability import Capability
from broker.store.audit import AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.capvouch import CAP_DIGESTS, cap_digest
from broker.store.connection import dump_json
from broker.store.recordsig import MARKER
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


@pytest.mark.xfail(strict=True, reason="red team 9 HIGH, not fixed (DESIGN §9's chain "
                   "rewritten from before its marker): a writer who deletes the audit.signed "
                   "marker has an unsigned grant forged after it vouch")
async def test_a_grant_forged_after_the_marker_was_deleted_grants_nothing(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    pid = await spawned_by_a(pg_database, fs)
    with raw(pg_database) as db:
        db.execute("DELETE FROM audit WHERE syscall=?", (MARKER,))
    _forge_grant_raw(pg_database, pid)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
        assert "cap_forged" not in {c["id"] for c in kernel.capabilities(pid)}


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
