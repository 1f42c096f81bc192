"""Red team on what loading capabilities takes from the chain (invariant 15), by whoever can
write the database but holds no key. A record forged *between* vouched records (an existing
record rewritten as a grant of a row the attacker plants, intact on its own, its link to the
next record broken) vouches for nothing at load: a record vouches only if the chain is whole
from it to the anchored head. The planted row is left out and recorded, `--verify` names the
broken link; a grant recorded before the break is not provable either (fail closed), one
recorded after it still holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.store.opening import open_store
from tests.broker.kernel.test_capability_rows_rte_redteam import forge_grant
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.test_cli import run
from tests.conftest import anchor_problems, open_image

PUB, OTHER = "fs:/data/pub/**:read", "fs:/data/other/**:read"


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    for where in ("pub", "other", "secret"):
        (tmp_path / "fs" / "data" / where).mkdir(parents=True)
        (tmp_path / "fs" / "data" / where / "f").write_text(where)
    return tmp_path / "fs"


def forge_between(store_at: Path | str, seq: int, pid: int) -> None:
    """Rewrite record `seq` as a grant of a row planted for `pid` (`forge_grant`): intact,
    linked to the record before it, not to the one after."""
    s = open_store(store_at)
    try:
        [old] = list(s.audit_records(after=seq - 1, limit=1))
    finally:
        s.close()
    forge_grant(store_at, pid, seq, old.prev_hash, old.ts, replacing=True)


async def test_a_record_forged_between_vouched_records_vouches_for_nothing(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB, OTHER])
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        later = kernel.spawn("agent", caps=[PUB])  # a vouched record after the forged one
        spawns = [r.seq for r in kernel.store.audit_records()
                  if r.record.syscall == "host.spawn"]
        read = spawns[0] + 1  # (a record of the read, between the two spawns)
        assert read < spawns[1]
    forge_between(store_at, read, later)  # (a grant of a row planted for the later one)
    for _ in range(2):  # (an open signs the head: the next must still refuse it)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(later, "read_file", {"path": "/data/secret/f"})
            assert "cap_forged" not in {c["id"] for c in kernel.capabilities(later)}
            # Its own grant, recorded after the break, is whole up to the anchored head.
            assert await kernel.call_tool(later, "read_file", {"path": "/data/pub/f"}) == "pub"
            # The records before the break are no longer provably those the anchor covers:
            # the grant of the process spawned before it is not taken either (fail closed).
            assert kernel.capabilities(pid) == []
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
            named = f"process {later}'s capability cap_forged (fs:/**:read, allow)"
            noted = anchor_problems(kernel)
            assert any(p.startswith(named) for p in noted), noted
            problems = kernel.verify_audit()[1]
            assert any(p.startswith(f"record {read + 1}: does not link to the record before")
                       for p in problems), problems
            assert any(p.startswith(named) for p in problems), problems


TWO = {"kind": "fs", "scope": "/data/pub/**", "rights": ["read"], "uses": 2}
ONE = {**TWO, "uses": 1}


def _row(kernel: Kernel, cap_id: str) -> dict[str, object]:
    [row] = kernel.store._query("SELECT * FROM capabilities WHERE id=?", (cap_id,))
    return {k: v for k, v in dict(row).items() if k != "rowid"}


def _given_back(store_at: Path | str, cap_id: str, row: dict[str, object]) -> None:
    """The spent grant's uses restored: its row raised, or (spent to its end, so deleted)
    put back as granted."""
    if row["uses"] == 1:
        edit(store_at, f"INSERT INTO capabilities({', '.join(row)}) VALUES "
             f"({', '.join('?' for _ in row)})", tuple(row.values()))
    else:
        edit(store_at, "UPDATE capabilities SET uses=? WHERE id=?", (row["uses"], cap_id))


@pytest.mark.parametrize("grant", [ONE, TWO], ids=["one-shot", "two-uses"])
async def test_a_spent_grant_given_its_uses_back_is_refused(
        store_at: Path | str, fs_root: Path, grant: dict[str, object]) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[grant, OTHER])
        other = kernel.spawn("agent", caps=[TWO])  # a counted neighbour, spent honestly
        [cap_id] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/pub/**"]
        row = _row(kernel, cap_id)
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert await kernel.call_tool(other, "read_file", {"path": "/data/pub/f"}) == "pub"
    _given_back(store_at, cap_id, row)
    named = f"process {pid}'s capability {cap_id} (fs:/data/pub/**:read, allow)"
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            with pytest.raises(NotCapable):  # never spent twice
                await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
            assert cap_id not in {c["id"] for c in kernel.capabilities(pid)}
            records = kernel.audit()
            assert [r for r in records if r["phase"] == "denied" and r["pid"] == pid]
            noted = [r["detail"]["problem"] for r in records if r["syscall"] == "audit.anchor"]
            assert [p for p in noted if p.startswith(named) and "count was raised" in p], noted
            assert any(p.startswith(named) and "count was raised" in p
                       for p in kernel.verify_audit()[1])
            # Its uncounted neighbour still reads; the honest counted grant spends its last.
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"}) == "other"
        # (the neighbour's last use, once)
        if _ == 0:
            async with Kernel.open(store_at, fs_root=fs_root) as kernel:
                assert await kernel.call_tool(other, "read_file",
                                              {"path": "/data/pub/f"}) == "pub"


async def test_verify_names_a_deleted_allow_row_and_a_process_whose_rows_all_went(
        store_at: Path | str, fs_root: Path) -> None:
    """An allow row deleted only narrows its process, and a process with no rows left holds
    nothing: loading takes what is left, but `libos audit --verify` (the real command) names
    each row the chain says was granted and never removed."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB, OTHER])
        emptied = kernel.spawn("agent", caps=[PUB])
        revoked = kernel.spawn("agent", caps=[PUB, OTHER])  # a row removed by a record
        [other] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/other/**"]
        gone = [c["id"] for c in kernel.capabilities(emptied)]
        kernel.revoke(next(c["id"] for c in kernel.capabilities(revoked)
                           if c["scope"] == "/data/other/**"))
    clean = run("audit", "--verify", "--db", str(store_at))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    edit(store_at, "DELETE FROM capabilities WHERE id=?", (other,))
    edit(store_at, "DELETE FROM capabilities WHERE owner=?", (emptied,))
    tampered = run("audit", "--verify", "--db", str(store_at))
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    out = tampered.stdout + tampered.stderr
    assert f"process {pid}'s capability {other} is missing" in out, out
    for cap_id in gone:
        assert f"process {emptied}'s capability {cap_id} is missing" in out, out
    assert f"process {revoked}'s" not in out
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        # The narrowed process keeps the rest of its grant.
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
