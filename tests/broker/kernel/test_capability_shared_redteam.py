"""Red team on what brokers sharing one PostgreSQL store take from the chain (invariant 15),
by whoever can write the database but holds no key. A writer opening the store alone refuses
every vouching record past the head its anchor covers (`caps.unvouched`); brokers in shared
mode (`broker=`) do not (`AuditChain._check_anchor`: other brokers' records are not theirs to
vouch), and append after whatever the head is. So a record appended at the head, linked and
intact (its hash is unkeyed), vouching for a row planted beside it, is whole up to the head
and grants: the planted fs:/**:read row is loaded. NOT FIXED (a known gap, docs/DESIGN.md
section 9): refusing records past the newest trusted anchor would also refuse the grants
another running broker made within its signing interval, for good; telling a forged record
from another broker's needs each broker's records bound to its key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel.test_capability_rows_rte_redteam import _forge_vouching_record
from tests.conftest import open_image


async def test_a_record_forged_at_the_shared_head_grants_nothing(
        pg_database: str, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    for where in ("pub", "secret"):
        (fs / "data" / where).mkdir(parents=True)
        (fs / "data" / where / "f").write_text(where)
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    _forge_vouching_record(pg_database, pid, linked=True)  # (cap_forged: fs:/**:read)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        # Its own grant still reads.
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert "cap_forged" not in {c["id"] for c in kernel.capabilities(pid)}
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
        # Recorded at the open, and named by --verify even once b has signed past it.
        [note] = [r for r in kernel.audit() if r["syscall"] == "caps.unsigned"]
        forged = note["detail"]["records"][0]
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        problems = kernel.verify_audit()[1]
        assert any(p.startswith(f"record {forged}: it vouches") for p in problems)
        assert any("cap_forged" in p and "planted or edited" in p for p in problems)
