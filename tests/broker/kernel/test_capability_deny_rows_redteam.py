"""Red team on deny rules as capability rows (invariant 15), by whoever can write the
database but holds no key. A deny rule narrows: a process that loses one holds more. Three
ways it was lost, each a silent widening:

- its row edited (its scope, say): the row was left out as edited, which lifted the rule;
- an uncounted deny's `uses` set to 0: a row at 0 uses matched its grant's digest with or
  without a count (for retired rows, which a deny never is), and the check passed over it;
- a deny granted with `uses` (nothing spends a deny) deleted: only uncounted rows were listed
  as rows whose deletion widens (`cap_rows`), so nothing named it.

Now a deny or ask row the chain does not vouch for leaves its process holding nothing
(recorded), a deny is never passed over for its count, and every deny row is listed. A
neighbour with the same grants, untouched, keeps them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import anchor_problems, open_image

DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
COUNTED = {**DENY, "uses": 5}
EDITS = {  # (the deny granted, the edit, whether the process then holds nothing)
    "scope-edited": (DENY, "UPDATE capabilities SET scope='/nothing/**' WHERE id=?", True),
    "uses-zeroed": (DENY, "UPDATE capabilities SET uses=0 WHERE id=?", True),
    "counted-deleted": (COUNTED, "DELETE FROM capabilities WHERE id=?", True),
    "counted-zeroed": (COUNTED, "UPDATE capabilities SET uses=0 WHERE id=?", False),
}


fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


@pytest.mark.parametrize("case", list(EDITS))
async def test_a_deny_rule_edited_away_never_widens(
        store_at: Path | str, fs_root: Path, case: str) -> None:
    deny, sql, nothing = EDITS[case]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/**:read", deny])
        neighbour = kernel.spawn("agent", caps=["fs:/data/**:read", deny])
        [deny_id] = [c["id"] for c in kernel.capabilities(pid) if c["effect"] == "deny"]
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
    edit(store_at, sql, (deny_id,))
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
            assert [r for r in kernel.audit(pid) if r["phase"] == "denied"]
            if nothing:
                assert kernel.capabilities(pid) == []
                noted = anchor_problems(kernel)
                assert [p for p in noted if f"process {pid}'s capability" in p], noted
            else:  # (its count means nothing: still a rule)
                assert await kernel.call_tool(pid, "read_file",
                                              {"path": "/data/pub/f"}) == "pub"
            assert await kernel.call_tool(neighbour, "read_file",
                                          {"path": "/data/pub/f"}) == "pub"
            with pytest.raises(NotCapable):
                await kernel.call_tool(neighbour, "read_file", {"path": "/data/secret/f"})


SECRET = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "labels": ["secret"]}
EXPORT = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "deny"}}


@pytest.mark.parametrize("how", ["deleted", "edited"])
async def test_a_labelling_row_edited_away_never_launders(
        store_at: Path | str, fs_root: Path, how: str) -> None:
    """An allow row that labels what it covers (`labels`) narrows too: every read of that
    data is labelled by it, whichever row allows the read. Deleted ("an allow row deleted
    only narrows") or edited (left out), the data read through a wider row came back
    unlabelled, and the export that refuses secrets took it."""
    (fs_root / "exports").mkdir()
    caps = ["fs:/data/**:read", SECRET, EXPORT]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=caps)
        neighbour = kernel.spawn("agent", caps=caps)
        [labelling] = [c["id"] for c in kernel.capabilities(pid)
                       if c["scope"] == "/data/secret/**"]
    edit(store_at, "DELETE FROM capabilities WHERE id=?" if how == "deleted" else
         "UPDATE capabilities SET policy=NULL WHERE id=?", (labelling,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        # The neighbour's public data still flows out (before it reads a secret).
        data = await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"})
        await kernel.call_tool(neighbour, "write_file", {"path": "/exports/ok", "data": data})
        for who in (pid, neighbour):
            try:
                text = await kernel.call_tool(who, "read_file", {"path": "/data/secret/f"})
            except NotCapable:
                assert who == pid  # (holding nothing)
                continue
            with pytest.raises(NotCapable):
                await kernel.call_tool(who, "write_file", {"path": "/exports/x", "data": text})
        assert not (fs_root / "exports" / "x").exists()
        assert kernel.capabilities(pid) == []
        noted = anchor_problems(kernel)
        assert [p for p in noted if f"process {pid}'s capability {labelling}" in p], noted
