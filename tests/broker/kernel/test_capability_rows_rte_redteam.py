"""Red team (rte) on capability rows vouched for by the chain (invariant 15): edits behind
the chain's back that the digests must catch. A capability granted with a count of uses,
part spent, its count edited away in the row (NULL: no count, unbounded): after a restart
it is left out and named, and a neighbour still reads. (The count itself is spent, so not
in the digest; whether there is one is what the grant said.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel, NotCapable
from broker.caps.capability import Capability, CapSpec
from broker.kernel.cap_loading import MAX_NOTED_ROWS, MAX_NOTED_TEXT
from broker.store.audit import AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.capvouch import CAP_DIGESTS, cap_digest
from broker.store.connection import dump_json
from broker.store.opening import open_store
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import open_image

TWO_READS = {"kind": "fs", "scope": "/data/pub/**", "rights": ["read"], "uses": 2}
OTHER = "fs:/data/other/**:read"


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    for where in ("pub", "other"):
        (tmp_path / "fs" / "data" / where).mkdir(parents=True)
        (tmp_path / "fs" / "data" / where / "f").write_text(where)
    return tmp_path / "fs"


async def test_a_counted_grant_made_uncounted_in_its_row_is_named_and_left_out(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[TWO_READS, OTHER])
        [cap_id] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/pub/**"]
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    edit(store_at, "UPDATE capabilities SET uses=NULL WHERE owner=? AND scope=?",
         (pid, "/data/pub/**"))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"}) == "other"
        named = f"process {pid}'s capability {cap_id} (fs:/data/pub/**:read, allow)"
        assert any(p.startswith(named) for p in kernel.verify_audit()[1])
        found = [r for r in kernel.audit() if r["syscall"] == "audit.anchor"]
        assert any(r["detail"]["problem"].startswith(named) for r in found)


async def test_a_child_keeps_its_grant_after_its_parent_spends_the_capability_it_came_from(
        store_at: Path | str, fs_root: Path) -> None:
    """A counted capability spent to its end while a child's derives from it: the child's
    row stays as vouched for (its lineage kept), and still reads after a restart."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[
            {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 2},
            "proc:*:spawn"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [
            {"kind": "fs", "scope": "/data/pub/**", "rights": ["read"], "uses": 1}]})
        assert await kernel.call_tool(parent, "read_file", {"path": "/data/other/f"}) == "other"
        with pytest.raises(NotCapable):  # its uses are spent
            await kernel.call_tool(parent, "read_file", {"path": "/data/other/f"})
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert kernel.verify_audit()[1] == []
        assert not [r for r in kernel.audit() if r["syscall"] == "audit.anchor"]
        assert await kernel.call_tool(child, "read_file", {"path": "/data/pub/f"}) == "pub"



async def test_a_grant_expiring_at_a_whole_second_keeps_its_capability_after_a_restart(
        store_at: Path | str, fs_root: Path) -> None:
    """An int `expires` (the embedding API's CapSpec takes one): its row reads back a float,
    which must digest the same as what its grant's record vouched for."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[CapSpec("fs", "/data/pub/**", frozenset({"read"}),
                                                  expires=4_102_444_800)])
        with pytest.raises(InvalidArgument, match="expires"):  # no float holds it: typed
            kernel.spawn("agent", caps=[CapSpec("fs", "/data/pub/**", frozenset({"read"}),
                                                expires=10**400)])
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert kernel.verify_audit()[1] == []
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"


async def _named_and_refused(store_at: Path | str, fs_root: Path, pid: int) -> None:
    """After the edit: `--verify` names something, and `pid` cannot read what it was never
    granted (what each open hole below fails)."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert kernel.verify_audit()[1] != []
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})


async def test_a_deny_rule_deleted_from_the_rows_is_missed(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/**:read", {
            "kind": "fs", "scope": "/data/other/**", "rights": ["read"], "effect": "deny"}])
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
    edit(store_at, "DELETE FROM capabilities WHERE owner=? AND effect='deny'", (pid,))
    await _named_and_refused(store_at, fs_root, pid)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert kernel.capabilities(pid) == []  # (it holds nothing: the deny cannot be known)
        assert any("no record removed it: deleted" in r["detail"].get("problem", "")
                   for r in kernel.audit() if r["syscall"] == "audit.anchor")


async def test_a_row_revoked_is_not_missed_after_a_restart(
        store_at: Path | str, fs_root: Path) -> None:
    """The neighbour: a row a `caps.revoke` removed is gone as its record says."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read", OTHER])
        [other] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/other/**"]
        kernel.revoke(other)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert kernel.verify_audit()[1] == []
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})


async def test_a_planted_process_with_no_creating_record_gets_no_authority(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        kernel.spawn("agent", caps=["fs:/data/pub/**:read"])  # records carry digests
    s = open_store(store_at)
    try:
        planted = s.insert_process(parent=None, image="agent", version="1",
                                   state="runnable", root="/", cwd="/")
    finally:
        s.close()
    edit(store_at, "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
         " created) VALUES (?,?,?,?,?,?,?,?)",
         ("cap_planted", planted, "h_planted", "fs", "/**", "read", "allow", 0.0))
    await _named_and_refused(store_at, fs_root, planted)


def forge_grant(store_at: Path | str, pid: int, seq: int, prev: str, ts: float = 1.0, *,
                replacing: bool = False) -> None:
    """What someone who can write the database but has no key can do: an intact record (its
    hash is unkeyed) at `seq`, linking to `prev`, vouching for a row they plant for `pid`
    (planted too); `replacing`: in place of the record there."""
    cap = Capability(kind="fs", scope="/**", rights=frozenset({"read"}), owner=pid,
                     id="cap_forged")
    record = AuditRecord(phase="admin", syscall="approval.answer", pid=pid,
                         detail={CAP_DIGESTS: [cap_digest("h_forged", cap)]})
    detail = dump_json(record.detail)
    s = open_store(store_at)
    try:
        with s.transaction() as db:
            if replacing:
                db.execute("DELETE FROM audit WHERE seq=?", (seq,))
            db.execute(INSERT_AUDIT, (seq, ts, pid, None, None, "admin", "approval.answer",
                                      None, None, None, detail, prev,
                                      record_hash(seq, ts, record, detail, prev), None))
            db.execute("INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
                       " created) VALUES (?,?,?,?,?,?,?,?)",
                       ("cap_forged", pid, "h_forged", "fs", "/**", "read", "allow", 0.0))
    finally:
        s.close()


def _forge_vouching_record(store_at: Path | str, pid: int, *, linked: bool) -> None:
    """`forge_grant` appended after the head (`linked`), else far past it, linking to
    nothing."""
    s = open_store(store_at)
    try:
        [head] = list(s.audit_records(after=s.head_seq - 1))
    finally:
        s.close()
    seq, prev = (head.seq + 1, head.hash) if linked else (head.seq + 1000, "0" * 64)
    forge_grant(store_at, pid, seq, prev)


@pytest.mark.parametrize("linked", [True, False], ids=["appended", "unlinked"])
async def test_a_forged_record_vouching_for_a_planted_row_grants_nothing(
        store_at: Path | str, fs_root: Path, linked: bool) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    _forge_vouching_record(store_at, pid, linked=linked)
    after = None
    for first in (True, False):  # (the open signs past it: the next must still see it so)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            assert kernel.verify_audit()[1] != []  # (this holds: verify sees the chain broken)
            if first or linked:
                assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            else:
                # Signed past a broken link, the chain no longer proves the records before
                # it the anchor's (`broker.store.links`): their grants hold nothing, and
                # one recorded after the break still holds.
                assert kernel.capabilities(pid) == []
                assert await kernel.call_tool(after, "read_file",
                                              {"path": "/data/pub/f"}) == "pub"
            after = after or kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
            [noted] = [r for r in kernel.audit() if r["syscall"] == "caps.unvouched"]
            assert "grant nothing" in noted["detail"]["problem"]
            assert not [c for c in kernel.capabilities(pid) if c["id"] == "cap_forged"]


async def test_a_flood_of_planted_rows_is_recorded_bounded_at_each_open(
        store_at: Path | str, fs_root: Path) -> None:
    """The rows are anyone's who writes the database, as many and as long as they like: an
    open records a bounded number of them, each bounded, and still leaves them all out."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    s = open_store(store_at)
    try:
        with s.transaction() as db:
            db.executemany(
                "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
                " created) VALUES (?,?,?,?,?,?,?,?)",
                [(f"cap_planted{i}" + "x" * 10_000, pid, f"h_planted{i}", "fs", "/**", "read",
                  "allow", 0.0) for i in range(200)])
        before = list(s.audit_records())[-1].seq
    finally:
        s.close()
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        noted = [r.record.detail["problem"] for r in kernel.store.audit_records()
                 if r.seq > before and r.record.syscall == "audit.anchor"
                 and "capabilit" in str(r.record.detail.get("problem"))]
        assert len(noted) == MAX_NOTED_ROWS + 1, len(noted)
        assert all(len(problem) <= MAX_NOTED_TEXT for problem in noted)
        assert noted[-1].startswith(f"{200 - MAX_NOTED_ROWS} more capability rows")
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
