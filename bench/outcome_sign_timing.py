"""What signing every `fs.write` outcome costs a shared-mode write (lane outsign; DESIGN §9,
"Labels are coarse and beside the chain": `recordsig.SIGNED_OUTCOMES`).

1. Micro: one `sign_record` of an `fs.write` outcome (Ed25519 sign), one `signed_by` (verify).
2. End to end: a broker sharing a PostgreSQL store (`broker="a"`, a throwaway cluster as the
   tests start theirs: `tests.pg_cluster`, in a checkout) writes a file through `call_tool`,
   outcomes signed (on) or not (off: `SIGNED_OUTCOMES` emptied), in blocks of ten that
   alternate, so drift on a shared machine hits both alike; median µs per write of each.
   `labelled`: the writer took `secret` on (each write's intent in flight until its outcome,
   whose signature a walk verifies).

Run with `python -m bench.outcome_sign_timing [BLOCKS] [labelled]`. Not a suite: a timing
for the lane's report; only the on/off difference beside its noise means much.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

from bench.timing import own_home, print_on_off
from broker import Kernel
from broker.store import keys, recordsig
from broker.store.audit import OUTCOME, AuditRecord


def _micro(tmp: Path, n: int = 2000) -> tuple[float, float]:
    key = keys.AuditKey.open(tmp / "key")
    record = AuditRecord(phase=OUTCOME, syscall="fs.write", pid=1, resource="/w/f",
                         detail={"ok": True})
    digest, sig = "ab" * 32, None
    start = time.perf_counter()
    for seq in range(n):
        sig = recordsig.sign_record(key, record, seq, digest)
    signed = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        assert recordsig.signed_by({key.public}, n - 1, digest, sig)
    return signed, (time.perf_counter() - start) / n * 1e6


async def _writes(dsn: str, fs: Path, blocks: int, labelled: bool) -> dict[str, list[float]]:
    from tests.broker.kernel.test_labels import SECRET_READ, _agent, _tree

    on, times = recordsig.SIGNED_OUTCOMES, {"on": list[float](), "off": list[float]()}
    write = {"path": "/work/f.txt", "data": "x"}
    async with Kernel.open(dsn, fs_root=fs, broker="a", lease_ttl=3600.0) as a:
        _tree(a)
        pid = await _agent(a, *([SECRET_READ] if labelled else []))
        if labelled:
            await a.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        for _ in range(40):  # (warm-up)
            await a.call_tool(pid, "write_file", write)
        try:
            for block in range(blocks):
                for side in ("on", "off") if block % 2 else ("off", "on"):
                    recordsig.SIGNED_OUTCOMES = on if side == "on" else frozenset()
                    for _ in range(10):
                        start = time.perf_counter()
                        await a.call_tool(pid, "write_file", write)
                        times[side].append(time.perf_counter() - start)
        finally:
            recordsig.SIGNED_OUTCOMES = on
    return times


def main(argv: list[str]) -> None:
    from tests.pg_cluster import Cluster

    blocks, labelled = int(argv[0]) if argv else 60, "labelled" in argv
    tmp = own_home("outsign-")
    signed, verified = _micro(tmp)
    print(f"micro: sign {signed:.1f} µs, verify {verified:.1f} µs")
    cluster = Cluster()
    try:
        times = trio.run(_writes, cluster.create_database(), tmp / "fs", blocks, labelled)
    finally:
        cluster.stop()
    print_on_off(times)


if __name__ == "__main__":
    main(sys.argv[1:])
