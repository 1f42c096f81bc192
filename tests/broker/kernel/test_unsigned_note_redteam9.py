"""Red team 9 on lane sharedvouch's `caps.unsigned` note: a shared open records once the
vouching records it finds without a trusted signature, and names no record a note named
before. A database writer holding no key forges a grant at the shared head and, after it, a
note of its own naming that grant: the next broker's open recorded nothing of the forgery
(LOW: the grant still grants nothing and `libos audit --verify` still names it; the chain
just says nothing at the open that met it). A note counts as said only when a trusted key
signed it, as a record that vouches must be.
"""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.store.audit import AuditRecord
from broker.store.recordsig import UNSIGNED
from tests.broker.kernel.test_capability_rows_rte_redteam import _forge_vouching_record
from tests.broker.kernel.test_capability_shared_signed_redteam import (  # noqa: F401
    _head,
    _reads,
    _sign_forged,
    fs,
)
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.conftest import open_image


async def test_a_forged_note_does_not_silence_the_open_that_meets_a_forged_grant(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        genuine = _head(pg_database)[2]
    assert genuine is not None
    _forge_vouching_record(pg_database, pid, linked=True)
    forged = _sign_forged(pg_database, "garbage", genuine)
    hush = append_past_head(pg_database, AuditRecord(
        phase="admin", syscall=UNSIGNED, detail={"records": [forged], "problem": "noted"}))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        await _reads(kernel, pid)  # (the forged grant grants nothing: held on main too)
        notes = [r for r in kernel.audit() if r["syscall"] == UNSIGNED and r["seq"] > hush]
        assert [n["detail"]["records"] for n in notes] == [[forged]]
        assert any(f"record {forged}:" in line for line in kernel.verify_audit()[1])
