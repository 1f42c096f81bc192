"""Red team (merged tree): `kernel.attach_mcp` under a store that fails one of its tools'
`admin` records part way: the host got SQLite's own error (the verb is not typed), and the
server's tools registered before the failure stayed registered after the server was gone
(their removal is only around the block's body), with no attach record in the chain.
Fixed: a failure while attaching removes what it registered, typed (`store_faults_typed`),
and is on the record as a rejected attach."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.broker.kernel.test_mcp_tools import server


async def test_an_attach_whose_second_tools_record_fails_leaves_nothing_registered(
        kernel: Kernel, db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("CREATE TRIGGER rt_mcp BEFORE INSERT ON audit WHEN NEW.resource='peer.add' "
                  "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    try:
        with pytest.raises(Conflict, match="disk full"):
            async with kernel.attach_mcp("peer", **server(), deadline=30):
                raise AssertionError("attached")
    finally:
        other.execute("DROP TRIGGER rt_mcp")
        other.close()
    assert [n for n in ("peer.echo", "peer.add", "peer.pattern") if n in kernel.host_tools] == []
    phases = [r["phase"] for r in kernel.audit() if r["syscall"] == "mcp.attach"]
    assert phases == ["rejected"]
    assert kernel.verify_audit()[1] == []
    async with kernel.attach_mcp("peer", **server(), deadline=30) as peer:  # healed: works
        assert "peer.add" in peer.tools
