"""Red team on the signatures that bind a shared PostgreSQL store's vouching records to the
broker that wrote them (docs/DESIGN.md, invariant 15; `broker.store.recordsig`). The
attacker writes the database and holds no trusted key: a grant appended at the head with a
signature that is garbage, made by a key nobody trusts, or moved from a genuine record grants
nothing, is recorded once (`caps.unsigned`), and the genuine grants of every broker still
hold; an older shared store's unsigned grants (before the `audit.signed` marker) hold too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import Conflict, Kernel, NotCapable
from broker.store import chain, recordsig
from broker.store.opening import open_store
from broker.store.recordsig import UNSIGNED, record_message
from tests.broker.kernel.test_capability_rows_rte_redteam import _forge_vouching_record
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_ends_unvouched_redteam5 import forge_host_kill, forge_rejected_exit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, _revived_notes
from tests.broker.store.conftest import raw
from tests.conftest import open_image


@pytest.fixture
def fs(tmp_path: Path) -> Path:
    root = tmp_path / "fs"
    for where in ("pub", "secret"):
        (root / "data" / where).mkdir(parents=True)
        (root / "data" / where / "f").write_text(where)
    return root


def _head(dsn: str) -> tuple[int, str, str | None]:
    with raw(dsn) as db:
        return tuple(db.execute("SELECT seq, hash, sig FROM audit ORDER BY seq DESC LIMIT 1"
                                ).fetchone())


def _sign_forged(dsn: str, how: str, genuine: str) -> int:
    """Give the record forged at the head a signature (`how`); its seq."""
    seq, digest, _ = _head(dsn)
    if how == "moved":  # a genuine broker's signature over another record
        sig = genuine
    elif how == "untrusted":  # valid, by a key nobody here trusts
        key = Ed25519PrivateKey.generate()
        sig = (f"{key.public_key().public_bytes_raw().hex()} "
               f"{key.sign(record_message(seq, digest)).hex()}")
    else:  # the trusted key's name, a signature of nothing
        sig = f"{genuine.split()[0]} {'ab' * 64}"
    with raw(dsn) as db:
        db.execute("UPDATE audit SET sig=? WHERE seq=?", (sig, seq))
    return seq


async def _reads(kernel: Kernel, pid: int) -> None:
    """`pid` reads its genuine grant, and nothing the forged record vouched for."""
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    assert "cap_forged" not in {c["id"] for c in kernel.capabilities(pid)}
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})


@pytest.mark.parametrize("how", ["garbage", "untrusted", "moved"])
async def test_a_forged_grant_with_a_signature_not_its_own_grants_nothing(
        pg_database: str, fs: Path, how: str) -> None:
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        genuine = _head(pg_database)[2]  # (the host.spawn's: signed by a)
    assert genuine is not None
    _forge_vouching_record(pg_database, pid, linked=True)
    forged = _sign_forged(pg_database, how, genuine)
    for broker in ("b", "c"):  # (noted by the first open only)
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            await _reads(kernel, pid)
            # A grant b makes itself holds.
            own = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
            assert await kernel.call_tool(own, "read_file", {"path": "/data/pub/f"}) == "pub"
            notes = [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
            assert [n["detail"]["records"] for n in notes] == [[forged]]
            assert "vouch for nothing" in notes[0]["detail"]["problem"]


async def test_a_genuine_grant_of_a_holds_while_b_runs_beside_it_and_after(
        pg_database: str, fs: Path) -> None:
    """Both brokers at once, each granting; then b alone loads both grants."""
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await open_image(a)
        by_a = a.spawn("agent", caps=["fs:/data/pub/**:read"])
        async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
            by_b = b.spawn("agent", caps=["fs:/data/pub/**:read"])
            assert await b.call_tool(by_b, "read_file", {"path": "/data/pub/f"}) == "pub"
        by_a_later = a.spawn("agent", caps=["fs:/data/pub/**:read"])  # (past b's records)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        for pid in (by_a, by_b, by_a_later):
            assert await b.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert not [r for r in b.audit() if r["syscall"] in (UNSIGNED, "audit.anchor")]
        assert b.verify_audit()[1] == []


async def test_an_older_shared_stores_unsigned_grants_hold_and_a_forgery_after_does_not(
        pg_database: str, fs: Path) -> None:
    """A broker from before signatures wrote no marker and signed nothing: its grants (before
    the first `audit.signed`) are taken as before; one forged after the marker is not."""
    older = pytest.MonkeyPatch()
    older.setattr(chain, "start_signing", lambda store: [])  # (it signs nothing, marks nothing)
    try:
        async with Kernel.open(pg_database, fs_root=fs, broker="old") as kernel:
            await open_image(kernel)
            pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    finally:
        older.undo()
    assert _head(pg_database)[2] is None
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:  # (the marker)
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    _forge_vouching_record(pg_database, pid, linked=True)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        await _reads(kernel, pid)
        [note] = [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
        assert note["detail"]["records"] == [_head_seq_of(kernel, "approval.answer")]


def _head_seq_of(kernel: Kernel, syscall: str) -> int:
    return max(r["seq"] for r in kernel.audit() if r["syscall"] == syscall)


async def test_a_single_writer_signs_nothing_and_marks_nothing(
        store_at: Path | str, fs: Path) -> None:
    """Alone on its store (SQLite, or PostgreSQL without `broker=`), a writer's anchor
    vouches: its records carry no signature, and no marker is written."""
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    store: Any = open_store(store_at)
    try:
        assert not store._query("SELECT 1 FROM audit WHERE sig IS NOT NULL OR syscall = ?",
                                (recordsig.MARKER,))
    finally:
        store.close()


async def test_a_kill_forged_at_the_shared_head_holds_and_a_forged_refusal_revives_nothing(
        pg_database: str, fs: Path) -> None:
    """Ends vouch too: an unsigned kill at the head does not end a live process (no end
    reason taken from it) but holds it (not run, its row as it was: DESIGN invariant 15),
    named once in the `caps.unsigned` note; an unsigned refusal takes no genuine end back
    (its row set runnable stays ended); a process b spawns runs."""
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        await open_image(kernel)
        live = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        ended = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        kernel.exit(ended, 3, "done")
    kill = forge_host_kill(pg_database, live)
    forge_rejected_exit(pg_database, ended)
    edit(pg_database, REVIVE, (ended,))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(Conflict, match="held for an unsigned end"):
            kernel.process(live)
        with pytest.raises(Conflict, match="held for an unsigned end"):
            await kernel.call_tool(live, "read_file", {"path": "/data/pub/f"})
        with pytest.raises(Conflict):
            await kernel.call_tool(ended, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, ended)) == 1
        [note] = [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
        refused = max(r["seq"] for r in kernel.audit() if r["phase"] == "rejected")
        # (Only the forged two: the forging helpers open the store alone, and that writer,
        # of a store shared brokers marked, signs what it records: its notes stand.)
        assert note["detail"]["records"] == [kill, refused]
        assert note["detail"]["held"] == [live]
        assert any(line.startswith(f"process {live}: held for an unsigned end")
                   for line in kernel.verify_audit()[1])
        own = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        assert await kernel.call_tool(own, "read_file", {"path": "/data/pub/f"}) == "pub"
    with raw(pg_database) as db:  # (held, not ended: nothing of the forged kill was taken)
        assert tuple(db.execute("SELECT state, exit_code FROM processes WHERE pid=?",
                                (live,)).fetchone()) == ("runnable", None)
