"""What one warm call's commit writes: the SQL statements the store runs per call, and the WAL
frames (pages) its commits append, by kind of page. The background checkpoint is held off
while it counts, so the log only grows and every frame written is still in it.

    python -m bench.commit_probe                 # wasm, read and tool; 1,000 calls each
    python -m bench.commit_probe read --calls 3000

Modes as `bench.call_ablation`'s (`wasm`: a WASM tool's sandbox replaced by a stand-in).
A frame is one page written whole (page size + 24 bytes); a commit that splits the audit
table's last leaf also writes the new leaf, its parent and page 1 (the file's size in pages).
"""

from __future__ import annotations

import argparse
import collections
import struct
from pathlib import Path
from typing import Any

import trio

FRAME_HEADER, WAL_HEADER = 24, 32
KINDS = {0x0D: "table leaf", 0x05: "table interior", 0x0A: "index leaf",
         0x02: "index interior"}


def frames(wal: bytes, page_size: int, first: int) -> collections.Counter[str]:
    """The frames of `wal` from frame number `first` (0-based) on, counted by kind of page."""
    found: collections.Counter[str] = collections.Counter()
    step = FRAME_HEADER + page_size
    for at in range(WAL_HEADER + first * step, len(wal) - step + 1, step):
        page_no = struct.unpack(">I", wal[at:at + 4])[0]
        page = wal[at + FRAME_HEADER:at + step]
        kind = KINDS.get(page[100 if page_no == 1 else 0], "overflow or free")
        found["page 1" if page_no == 1 else kind] += 1
    return found


async def probe(mode: str, calls: int) -> dict[str, Any]:
    import broker.store.wal_checkpointer as wal_checkpointer
    from bench.call_ablation import warm_call

    wal_checkpointer.EVERY = 3600.0  # (the log only grows while counting)
    async with warm_call(mode) as (kernel, call, awaits):
        db = kernel.store._db  # type: ignore[attr-defined]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        wal = Path(kernel.store._file + "-wal")  # type: ignore[attr-defined]
        first = (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + page_size)
        statements: collections.Counter[str] = collections.Counter()
        db.set_trace_callback(lambda sql: statements.update([sql.split("(")[0][:60]]))
        for _ in range(calls):
            done = call()
            if awaits:
                await done  # type: ignore[misc]
        db.set_trace_callback(None)
        written = frames(wal.read_bytes(), page_size, first)
        indexes = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='audit'")]
    return {"page_size": page_size, "frames": written, "statements": statements,
            "audit_indexes": indexes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", default=["wasm", "read", "tool"])
    parser.add_argument("--calls", type=int, default=1000)
    options = parser.parse_args()
    for mode in options.modes:
        found = trio.run(probe, mode, options.calls)
        n, size = options.calls, found["page_size"]
        total = sum(found["frames"].values())
        print(f"{mode}: page size {size}, {total / n:.2f} WAL frames per call"
              f" ({total * (size + FRAME_HEADER) / n / 1000:.1f} KB)")
        for kind, count in found["frames"].most_common():
            print(f"  {count / n:5.2f} per call  {kind}")
        for sql, count in found["statements"].most_common():
            print(f"  {count / n:5.2f} per call  {sql}")
        print(f"  indexes on audit: {', '.join(found['audit_indexes']) or 'none'}")


if __name__ == "__main__":
    main()
