"""Red team on revocation as the chain records it (invariant 15), by whoever can write the
database but holds no key. A revoked capability's row is deleted, and the `caps.revoke`
record names it (`cap_removed`); its grant's record still vouches for its digest. A writer
who put the revoked row back (as it was granted: the same digest) had it loaded: the
revocation undone. A row the chain says was removed is now refused wherever it turns up,
recorded; the process's other grants hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import OTHER, PUB, _row
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import anchor_problems, open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


@pytest.mark.parametrize("by", ["revoked", "parent-revoked"])
async def test_a_revoked_row_put_back_is_refused(
        store_at: Path | str, fs_root: Path, by: str) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB, OTHER, "proc:agent:spawn"])
        [other] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/other/**"]
        holder, cap_id = pid, other
        if by == "parent-revoked":  # (revoking a parent's takes its child's derived one too)
            holder = await kernel.call_tool(pid, "spawn", {"image": "agent", "caps": [OTHER]})
            [cap_id] = [c["id"] for c in kernel.capabilities(holder)
                        if c["scope"] == "/data/other/**"]
        row = _row(kernel, cap_id)
        kernel.revoke(other)
        with pytest.raises(NotCapable):
            await kernel.call_tool(holder, "read_file", {"path": "/data/other/f"})
    edit(store_at, f"INSERT INTO capabilities({', '.join(row)}) VALUES "  # (as it was)
         f"({', '.join('?' for _ in row)})", tuple(row.values()))
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(holder, "read_file", {"path": "/data/other/f"})
            assert cap_id not in {c["id"] for c in kernel.capabilities(holder)}
            noted = anchor_problems(kernel)
            assert [p for p in noted if f"process {holder}'s capability {cap_id}" in p], noted
            assert any(f"process {holder}'s capability {cap_id}" in p
                       for p in kernel.verify_audit()[1])
            # Its other grant holds.
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
