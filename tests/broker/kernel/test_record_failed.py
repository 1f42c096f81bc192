"""A store that refuses the record of a call already carried out (a builtin's `fs.write`:
the file written, then its outcome's row refused): the caller of the `tool.call` and its
record were told the store's "nothing of it was done" `Conflict`, an invitation to write
again, for a write that was made. Now they say what happened: carried out, its record
failed, its outcome unknown. Real SQLite and PostgreSQL, a trigger that refuses that one row."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, Kernel
from tests.conftest import open_image

_PG_REFUSE = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.syscall = '{refused}' AND NEW.phase = 'outcome' THEN RAISE EXCEPTION 'disk full'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION refuse()"""


@pytest.fixture
async def kernel(store_at: Path | str) -> AsyncIterator[Kernel]:
    async with Kernel.open(store_at) as k:
        yield k


def _refusing(store_at: Path | str, refused: str) -> Any:
    """A second connection with the trigger made: `DROP TRIGGER refuse` heals."""
    if isinstance(store_at, Path):
        other = sqlite3.connect(store_at, isolation_level=None)
        other.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.syscall="
                      f"'{refused}' AND NEW.phase='outcome' BEGIN SELECT RAISE(ABORT, "
                      "'disk full'); END")
        return other
    from broker.store.pg_connection import connect

    other = connect(str(store_at), "fault")
    other.execute(_PG_REFUSE.format(refused=refused))
    return other


@pytest.mark.parametrize("refused", ["fs.write", "tool.call"])
async def test_a_write_whose_record_fails_is_not_told_nothing_was_done(
        kernel: Kernel, store_at: Path | str, refused: str) -> None:
    """`fs.write`: the builtin's own record (the `tool.call` around it records the error);
    `tool.call`: the host's call's record, the write's committed (the host is told)."""
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "work").mkdir()
    await open_image(kernel, needs=("fs:/**:read,write",))
    pid = kernel.spawn("agent", caps=["fs:/work/**:read,write"])
    other = _refusing(store_at, refused)
    try:
        with pytest.raises(Conflict) as raised:
            await kernel.call_tool(pid, "write_file", {"path": "/work/f.txt", "data": "new"})
        other.execute("DROP TRIGGER refuse" if isinstance(store_at, Path) else
                      "DROP TRIGGER refuse ON audit")
    finally:
        other.close()
    assert (root / "work" / "f.txt").read_text() == "new"  # the effect was made
    told = [raised.value.message]
    if refused == "fs.write":  # (the tool.call's outcome, written: it says the same)
        told.append(next(r for r in reversed(kernel.audit(pid)) if r["syscall"] == "tool.call"
                         and r["phase"] == "outcome")["detail"]["message"])
    for message in told:
        assert "nothing of it was done" not in message
        assert f"{refused} was carried out" in message and "unknown" in message
    # The neighbour: with the store healed, a write is done and recorded as ever.
    assert await kernel.call_tool(pid, "write_file", {"path": "/work/g.txt", "data": "x"}) == 1
    assert kernel.verify_audit()[1] == []
