"""Audit verification: what checking the payloads against the chain costs.

A kernel writes a history of tool calls (each leaves a `tool.call` intent with its arguments
payload, an inner syscall's intent and outcome with its result payload, and the call's
outcome). Measured in the same run:

* verifying the hash chain alone (`verify_chain`), per record;
* the whole of `libos audit --verify` (chain, anchor records, every payload against the hash
  its record carries, tool sources, stored registrations), per record;
* replaying one call near the end (it verifies the stretch from its process's first record);
* what the signed anchor costs: an append (which moves the head and its MAC on), beside one
  Ed25519 signature of the head (made at most every `SIGN_INTERVAL` while records come, so
  an append does not pay it), and exporting the audit and verifying the export.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.timing import best_us
from broker import AgentImage, Kernel
from broker.kernel.anchoring import SIGN_INTERVAL
from broker.store import AuditRecord, verify_chain
from broker.store.export import export, verify_export

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
        signing = _signing(root, kernel.store)
    return {
        **signing,
        "records": records,
        "verify_chain_only_us_per_record": round(chain_s / records * 1e6, 1),
        "verify_all_us_per_record": round(full_s / records * 1e6, 1),
        "verify_all_over_chain_only": round(full_s / chain_s, 2),
        "replay_of_one_call_ms": round(replay_s * 1e3, 1),
    }


def _signing(root: Path, store: Any) -> dict[str, Any]:
    def append() -> None:
        store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))

    def sign() -> None:
        store._signed = None  # sign again, as if records had come
        store.sign_anchor()

    append_us = best_us(append, 2000)
    mac_us = best_us(lambda: store._key.mac(*store._head), 2000)
    sign_us = best_us(sign, 2000)
    out = root / "export.jsonl"
    start = time.perf_counter()
    count = export(store, out)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    _, problems = verify_export(out, store.signer)
    verify_s = time.perf_counter() - start
    assert not problems
    return {
        "append_with_head_mac_us": round(append_us, 1),
        "head_mac_us": round(mac_us, 1),
        "sign_anchor_us": round(sign_us, 1),
        "sign_over_append": round(sign_us / append_us, 2),
        "signatures_per_s_at_most": round(1 / SIGN_INTERVAL),
        "export_us_per_record": round(export_s / count * 1e6, 1),
        "verify_export_us_per_record": round(verify_s / count * 1e6, 1),
    }


def run(calls: int = CALLS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(_measure, Path(tmp), calls)


if __name__ == "__main__":
    print(run())
