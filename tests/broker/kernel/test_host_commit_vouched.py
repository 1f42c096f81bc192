"""The host's `Kernel.commit_image` records the image it stores (`host.image`, with the
sha256 of its row and the process it was committed from), as a host registration does: the
chain vouches for the committed image, so its row edited behind the chain's back (a tool
added) is named by `libos audit --verify`. Both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store.opening import open_store
from broker.store.vouch import spec_digest
from tests.conftest import open_image


async def test_host_commit_is_recorded_and_vouched(store_at: Path | str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel, tools=("read_file",), needs=("fs:/data/**:read",))
        pid = kernel.spawn("agent", caps=["fs:/data/**:read"])
        image = kernel.commit_image(pid, "kept")
        [record] = [r for r in kernel.audit() if r["syscall"] == "host.image"
                    and r["detail"]["image"] == "kept"]
        _, row = kernel.store.get_image("kept", image.version)
        assert record["phase"] == "admin" and record["detail"]["committed_from"] == pid
        assert record["detail"]["spec"]["sha256"] == spec_digest(row)
        assert kernel.verify_audit()[1] == []
    store = open_store(store_at)
    try:
        spec = {**row, "tools": [*row["tools"], "write_file"]}
        with store.transaction() as db:
            db.execute("UPDATE images SET spec=? WHERE name=?", (json.dumps(spec), "kept"))
    finally:
        store.close()
    db = ["--db", str(store_at)] if isinstance(store_at, Path) else ["--db", store_at]
    assert cli_main(["audit", "--verify", "--json", *db]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert problems == [f"record {record['seq']}: image kept:{image.version} is stored "
                        "otherwise than it was registered (its tools, manifests, needs, "
                        "denies or planner differ): edited"]
