"""`libos audit --verify` on a capability row that cannot be read back (its policy not JSON:
no grant could have written it) names that row and goes on verifying the rest: a widened
row after it is named too, and the exit is 1 (it stopped at the damaged row, with a
traceback, before). Both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store.opening import open_store
from tests.conftest import open_image

CAPS = ["fs:/data/pub/**:read", "fs:/data/other/**:read"]


async def test_verify_names_a_damaged_row_and_goes_on(store_at: Path | str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel, tools=("read_file",), needs=("fs:/data/**:read",))
        first, second = kernel.spawn("agent", caps=CAPS), kernel.spawn("agent", caps=CAPS)
        damaged = next(c["id"] for c in kernel.capabilities(first) if c["kind"] == "fs")
        widened = next(c["id"] for c in kernel.capabilities(second) if c["kind"] == "fs")
    store = open_store(store_at)
    try:
        with store.transaction() as db:
            db.execute("UPDATE capabilities SET policy='{not json' WHERE id=?", (damaged,))
            db.execute("UPDATE capabilities SET scope='/**' WHERE id=?", (widened,))
    finally:
        store.close()
    assert cli_main(["audit", "--verify", "--json", "--db", str(store_at)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 2, problems
    assert problems[0] == (f"capability row '{damaged}' cannot be read back "
                           "(JSONDecodeError): edited in the database")
    assert problems[1].startswith(f"process {second}'s capability {widened} (fs:/**:read")
    assert problems[1].endswith("planted or edited")
