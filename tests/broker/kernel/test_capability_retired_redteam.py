"""Red team on rows an exec retires (invariant 15), by whoever can write the database but
holds no key. An exec narrows a process to what its new image declares: a capability wider
than that is retired, kept with no uses (allowing nothing) for lineage when something
derives from it, as the narrowed one that replaces it does. Its count is not in its digest,
and a retired row matches its grant either way, so a writer who set the retired row's
`uses` back (NULL: standing again) had it loaded: the process held, after its exec, the
wider authority its new image does not declare. The exec's record now names the rows it
retires (`cap_retired`), and one stored with uses again is refused and recorded; the
narrowed capability still works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_exec import setup
from tests.conftest import anchor_problems


@pytest.mark.parametrize("uses", [None, 3], ids=["standing", "counted"])
async def test_a_retired_row_given_uses_back_is_refused(
        store_at: Path | str, tmp_path: Path, uses: int | None) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        pid = await setup(kernel)
        wide = next(c["id"] for c in kernel.capabilities(pid) if c["kind"] == "fs")
        await kernel.call_tool(pid, "exec", {"image": "narrow"})
        assert {c["id"]: c.get("uses") for c in kernel.capabilities(pid)}[wide] == 0
    edit(store_at, "UPDATE capabilities SET uses=? WHERE id=?", (uses, wide))
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/private/f.txt"})
            assert [r for r in kernel.audit(pid) if r["phase"] == "denied"]
            noted = anchor_problems(kernel)
            assert [p for p in noted if f"process {pid}'s capability {wide}" in p], noted
            assert any(f"process {pid}'s capability {wide}" in p
                       for p in kernel.verify_audit()[1])
            # The narrowed capability still reads what the new image declares.
            assert await kernel.call_tool(pid, "read_file",
                                          {"path": "/data/public/f.txt"}) == "public"
