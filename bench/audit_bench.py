"""Audit verification: what checking the payloads against the chain costs.

A kernel writes a history of tool calls (each leaves a `tool.call` intent with its arguments
payload, an inner syscall's intent and outcome with its result payload, and the call's
outcome). Measured in the same run:

* verifying the hash chain alone (`verify_chain`), per record;
* the whole of `libos audit --verify` (chain, anchor records, every payload against the hash
  its record carries, tool sources, stored registrations), per record;
* replaying one call near the end (it verifies the stretch from its process's first record).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, Kernel
from broker.store import verify_chain

CALLS = 2500


async def _measure(root: Path, calls: int) -> dict[str, Any]:
    async with Kernel.open(root / "audit.db") as kernel:
        await kernel.register_image(AgentImage("b", tools=("write_file", "read_file"),
                                               needs=("fs:/**:read,write",)))
        pid = kernel.spawn("b", caps=["fs:/**:read,write"])
        await kernel.call_tool(pid, "write_file", {"path": "/f.txt", "data": "x" * 200})
        for _ in range(calls):
            await kernel.call_tool(pid, "read_file", {"path": "/f.txt"})
        inv = kernel.store.head_seq - 3
        records = kernel.store.head_seq

        start = time.perf_counter()
        _, problems = verify_chain(kernel.store.audit_records())
        chain_s = time.perf_counter() - start
        assert not problems

        start = time.perf_counter()
        _, problems = kernel.verify_audit()
        full_s = time.perf_counter() - start
        assert not problems

        start = time.perf_counter()
        replayed = await kernel.replay(inv)
        replay_s = time.perf_counter() - start
        assert replayed["same"] is True
    return {
        "records": records,
        "verify_chain_only_us_per_record": round(chain_s / records * 1e6, 1),
        "verify_all_us_per_record": round(full_s / records * 1e6, 1),
        "verify_all_over_chain_only": round(full_s / chain_s, 2),
        "replay_of_one_call_ms": round(replay_s * 1e3, 1),
    }


def run(calls: int = CALLS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(_measure, Path(tmp), calls)


if __name__ == "__main__":
    print(run())
