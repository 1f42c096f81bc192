"""A read's intent and outcome as one record (phase `intent+outcome`), beside chains written
before it as two: both verify with the same hash, and tampering with a whole record (its
arguments, its result, its payload, its place) is named like any other's. On both backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from broker import Kernel
from broker.store import AuditRecord
from broker.store.audit import WHOLE
from broker.store.opening import open_store
from tests.broker.store.conftest import raw
from tests.broker.store.test_audit_chain import kernel_problems, problems_of, store_problems
from tests.conftest import open_image


def _old_pair(store_at: str | Path) -> tuple[int, int]:
    """A read written the way brokers before the whole record wrote it: an intent and an
    outcome naming it (`append_pair`, the store's API for that, kept)."""
    store = open_store(store_at)
    try:
        intent = AuditRecord(phase="intent", syscall="clock.now", pid=1,
                             detail={"args": {}})
        outcome = AuditRecord(phase="outcome", syscall="clock.now", pid=1,
                              detail={"ok": True, "result": 1.5})
        seq = store.append_pair(intent, outcome)
        return seq, seq + 1
    finally:
        store.close()


async def read_directly(kernel: Kernel) -> int:
    """A process that may read /data/**, which has read /data/a.txt by a direct `fs.read`."""
    await open_image(kernel, needs=("fs:/**:read,write",), tools=("read_file",))
    pid = kernel.spawn("agent", caps=["fs:/data/**:read"])
    data = Path(kernel.fs.root, "data")  # type: ignore[attr-defined]
    data.mkdir()
    (data / "a.txt").write_text("hello")
    kernel.dispatcher.run_now(kernel.process(pid), None, "fs.read", {"path": "/data/a.txt"})
    return pid


async def _reads(store_at: str | Path) -> list[dict[str, Any]]:
    """A kernel reads a file directly and through `read_file`; its records."""
    async with Kernel.open(store_at) as kernel:
        pid = await read_directly(kernel)
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        assert kernel.verify_audit()[1] == []
        return kernel.audit(pid)


@pytest.fixture
async def mixed(store_at: str | Path) -> dict[str, int]:
    """Old pairs, then whole records, in one chain: the seqs of each kind."""
    intent, outcome = _old_pair(store_at)
    records = await _reads(store_at)
    wholes = [r["seq"] for r in records if r["phase"] == WHOLE and r["syscall"] == "fs.read"]
    # The direct read, and read_file's: folded into its call's whole record, listed under its
    # seq (`audit.as_listed`).
    assert len(wholes) == 2 and [r["syscall"] for r in records if r["seq"] == wholes[1]] == [
        "tool.call", "fs.read"]
    assert not any(r["phase"] == "outcome" and r["syscall"] == "fs.read" for r in records)
    return {"intent": intent, "outcome": outcome, "whole": wholes[0], "in_tool": wholes[1]}


async def test_a_chain_of_pairs_then_whole_records_verifies(store_at: str | Path,
                                                            mixed: dict[str, int]) -> None:
    assert problems_of(store_at) == []
    assert store_problems(store_at) == []
    assert await kernel_problems(store_at) == []
    with raw(store_at) as db:
        phases = dict(db.execute("SELECT seq, phase FROM audit WHERE seq IN (?,?,?)",
                                 (mixed["intent"], mixed["outcome"], mixed["whole"])))
    assert phases == {mixed["intent"]: "intent", mixed["outcome"]: "outcome",
                      mixed["whole"]: WHOLE}


@pytest.mark.parametrize("key", ["args", "result", "ok"])
async def test_an_edited_whole_record_is_named(store_at: str | Path, mixed: dict[str, int],
                                               key: str) -> None:
    seq = mixed["whole"]
    with raw(store_at) as db:
        [detail] = db.execute("SELECT detail FROM audit WHERE seq=?", (seq,)).fetchone()
        edited = {**json.loads(detail), key: {"path": "/data/b.txt"} if key == "args"
                  else "evil" if key == "result" else False}
        db.execute("UPDATE audit SET detail=? WHERE seq=?", (json.dumps(edited), seq))
    problems = problems_of(store_at)
    assert problems == [f"record {seq}: content does not match its hash: edited"]
    assert (await kernel_problems(store_at))[0] == problems[0]


async def test_a_whole_records_payload_is_its_result(store_at: str | Path,
                                                     mixed: dict[str, int]) -> None:
    seq = mixed["in_tool"]  # (the call's record: its arguments, then its read's result)
    with raw(store_at) as db:
        [payload] = db.execute("SELECT payload FROM audit WHERE seq=?", (seq,)).fetchone()
        unpacker = msgpack.Unpacker()
        unpacker.feed(bytes(payload))
        unpacker.skip()
        args = bytes(payload)[:unpacker.tell()]
        db.execute("UPDATE audit SET payload=? WHERE seq=?", (args + msgpack.packb("evil"), seq))
    assert problems_of(store_at) == []  # the chain itself is intact
    assert store_problems(store_at) == [
        f"record {seq}: its stored arguments and result payload does not match the hash its"
        " record carries: edited"]


async def test_a_whole_record_deleted_or_swapped_with_a_pair_is_named(
        store_at: str | Path, mixed: dict[str, int]) -> None:
    whole, outcome = mixed["whole"], mixed["outcome"]
    with raw(store_at) as db:
        db.execute("UPDATE audit SET seq=-1 WHERE seq=?", (whole,))
        db.execute("UPDATE audit SET seq=? WHERE seq=?", (whole, outcome))
        db.execute("UPDATE audit SET seq=? WHERE seq=-1", (outcome,))
    flagged = {int(p.split()[1].rstrip(":")) for p in problems_of(store_at)}
    assert {outcome, whole} <= flagged
    with raw(store_at) as db:  # put back, then delete the whole record
        db.execute("UPDATE audit SET seq=-1 WHERE seq=?", (whole,))
        db.execute("UPDATE audit SET seq=? WHERE seq=?", (whole, outcome))
        db.execute("UPDATE audit SET seq=? WHERE seq=-1", (outcome,))
    assert problems_of(store_at) == []
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq=?", (whole,))
    assert problems_of(store_at)[0].startswith(
        f"record {whole + 1}: sequence jumps from {whole - 1}")
