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
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.test_cli import run
from tests.conftest import open_image

PUB = "fs:/data/pub/**:read"
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    (tmp_path / "fs" / "data" / "pub").mkdir(parents=True)
    (tmp_path / "fs" / "data" / "pub" / "f").write_text("pub")
    return tmp_path / "fs"


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
            noted = [r["detail"]["problem"] for r in kernel.audit()
                     if r["syscall"] == "audit.anchor"]
            assert any(p.startswith(named) for p in noted), noted
            problems = kernel.verify_audit()[1]
            assert f"record {seq}: content does not match its hash: edited" in problems
            # Recorded after it, whole to the anchored head: still held.
            assert await kernel.call_tool(later, "read_file", {"path": "/data/pub/f"}) == "pub"
    checked = run("audit", "--verify", "--db", str(store_at))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"record {seq}: content does not match its hash: edited" in checked.stdout
    assert "RecursionError" not in checked.stdout + checked.stderr
