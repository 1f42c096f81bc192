"""Red team on the links walk every open makes (invariant 15), by whoever can write the
database but holds no key: a crafted record must not stop a broker from opening. A record of
a vouching name whose detail is JSON nested past what Python's parser can read (100,000
levels) was parsed by the walk and raised RecursionError out of `Kernel.open` (and out of
`libos audit --verify`): the broker could not start. It is an edited record like any other:
the grant it was fails closed, the open records what it left out, `--verify` names the
record, and a grant recorded after it still holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.store.audit import AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT as INSERT_AUDIT_SQL
from broker.store.capvouch import CAP_UNVOUCHED, UNVOUCHED
from broker.store.connection import dump_json
from broker.store.opening import open_store
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.test_cli import run
from tests.conftest import anchor_problems, open_image

PUB = "fs:/data/pub/**:read"
DEEP = "[" * 100_000 + "]" * 100_000


fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


async def test_a_vouching_record_nested_past_the_parser_does_not_stop_an_open(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        first = kernel.spawn("agent", caps=[PUB])
        later = kernel.spawn("agent", caps=[PUB])
        [seq] = [r.seq for r in kernel.store.audit_records(pid=first)
                 if r.record.syscall == "host.spawn"]
    edit(store_at, "UPDATE audit SET detail=? WHERE seq=?", (DEEP, seq))
    for _ in range(2):  # (an open signs the head: the next must still refuse it)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            assert kernel.capabilities(first) == []  # its grant's record edited: nothing
            with pytest.raises(NotCapable):
                await kernel.call_tool(first, "read_file", {"path": "/data/pub/f"})
            named = f"process {first}'s capability "
            noted = anchor_problems(kernel)
            assert any(p.startswith(named) for p in noted), noted
            problems = kernel.verify_audit()[1]
            assert f"record {seq}: content does not match its hash: edited" in problems
            # Recorded after it, whole to the anchored head: still held.
            assert await kernel.call_tool(later, "read_file", {"path": "/data/pub/f"}) == "pub"
    checked = run("audit", "--verify", "--db", str(store_at))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"record {seq}: content does not match its hash: edited" in checked.stdout
    assert "RecursionError" not in checked.stdout + checked.stderr


def _forge_note(store_at: Path | str, span: list[int]) -> int:
    """A `caps.unvouched` record appended at the head (linked, intact: its hash is unkeyed),
    claiming that the records in `span` vouch for nothing; its seq."""
    s = open_store(store_at)
    try:
        [head] = list(s.audit_records(after=s.head_seq - 1))
    finally:
        s.close()
    seq, ts = head.seq + 1, head.ts + 1.0
    record = AuditRecord(phase="admin", syscall=UNVOUCHED, detail={CAP_UNVOUCHED: span})
    detail = dump_json(record.detail)
    edit(store_at, INSERT_AUDIT_SQL, (seq, ts, None, None, None, "admin", UNVOUCHED, None, None,
                                      None, detail, head.hash,
                                      record_hash(seq, ts, record, detail, head.hash), None))
    return seq


async def test_a_forged_unvouched_note_past_the_head_takes_no_grant_away(
        store_at: Path | str, fs_root: Path) -> None:
    """A `caps.unvouched` record is the writer's note of a span its anchor did not cover; one
    appended past the head by someone without the key, claiming the whole chain, is itself
    unvouched: it must not make every genuine grant hold nothing for good (it was honoured,
    and each row named as planted)."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        head = kernel.store.head_seq
    forged = _forge_note(store_at, [0, head])
    for _ in range(2):  # (an open signs the head past it: the next must still ignore it)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            noted = [r["detail"].get("problem", "") for r in kernel.audit()
                     if r["syscall"] == "audit.anchor"]
            assert not [p for p in noted if "planted" in p], noted
            # The open that found it past the anchor recorded so, and noted it unvouched.
            assert any(p.startswith(f"record {forged}: records {forged} to") for p in noted)
            notes = [r["detail"].get("problem", "") for r in kernel.audit()
                     if r["syscall"] == UNVOUCHED and r["seq"] != forged]
            assert [p for p in notes if p.startswith(f"record {forged}:")], notes
            spawned = kernel.spawn("agent", caps=[PUB])  # a neighbour grant, as ever
            assert await kernel.call_tool(spawned, "read_file", {"path": "/data/pub/f"}) == "pub"
