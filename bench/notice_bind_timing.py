"""What binding an anchor notice to its store costs (lane noticebind; DESIGN §9, "Labels are
coarse and beside the chain": `anchor_notices.Told`).

1. Micro: the notice's signature a publish adds (`signing.notice_message`, Ed25519 sign);
   the check a told anchor by a trusted key adds (`Told.holds`: one verify), for a notice
   of this store and for another store's (both verify in full: no shortcut for a miss).
2. End to end: `anchor_notices.publish` (the upsert and its notice, one statement) on a
   throwaway PostgreSQL cluster (`tests.pg_cluster`, in a checkout), with the notice signed
   (on) or its signature made once beforehand (off), in blocks of ten that alternate, so
   drift on a shared machine hits both alike; median µs per publish of each.

Run with `python -m bench.notice_bind_timing [BLOCKS]`. Not a suite: a timing for the lane's
report; only the on/off difference beside its noise means much.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.timing import own_home, print_on_off
from broker.store import anchor_notices, keys, signing
from broker.store.anchor import Signed
from broker.store.anchor_notices import Told

STORE, OTHER = "ab" * 32, "cd" * 32


def _micro(key: keys.AuditKey, n: int = 2000) -> tuple[float, float, float]:
    digest = "ef" * 32
    start = time.perf_counter()
    for seq in range(n):
        bound = key.sign(signing.notice_message(STORE, "b", seq, digest))
    signed = (time.perf_counter() - start) / n * 1e6
    told = Told("b", Signed(n - 1, digest, key.public, "00" * 64), bound)
    times = []
    for store, holds in ((STORE, True), (OTHER, False)):
        start = time.perf_counter()
        for _ in range(n):
            assert told.holds(store) is holds
        times.append((time.perf_counter() - start) / n * 1e6)
    return signed, times[0], times[1]


class _Made:
    """A key whose signature was made beforehand (off: what a publish cost before)."""

    def __init__(self, signature: str) -> None:
        self._signature = signature

    def sign(self, message: bytes) -> str:
        return self._signature


def _publishes(dsn: str, key: keys.AuditKey, blocks: int) -> dict[str, list[float]]:
    from broker.store.postgres import PostgresStore

    tmp = Path(tempfile.mkdtemp(prefix="noticebind-"))
    store = PostgresStore(dsn, broker="b", anchor=tmp / "b.anchor", audit_key=tmp / "key")
    made: Any = _Made(key.sign(b"x"))
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        seq = 10**6
        for block in range(blocks + 4):  # (the first 4: warm-up)
            for side in ("on", "off") if block % 2 else ("off", "on"):
                for _ in range(10):
                    seq += 1
                    signed = Signed(seq, "ef" * 32, key.public, "00" * 64)
                    start = time.perf_counter()
                    with store._lock:
                        anchor_notices.publish(store._db, "b", signed, time.time(),
                                               key if side == "on" else made, STORE)
                    if block >= 4:
                        times[side].append(time.perf_counter() - start)
    finally:
        store.close()
    return times


def main(argv: list[str]) -> None:
    from tests.pg_cluster import Cluster

    blocks = int(argv[0]) if argv else 60
    tmp = own_home("noticebind-")
    key = keys.AuditKey.open(tmp / "key")
    signed, holds, other = _micro(key)
    print(f"micro: notice sign {signed:.1f} µs; Told.holds {holds:.1f} µs (this store),"
          f" {other:.1f} µs (another store's)")
    cluster = Cluster()
    try:
        times = _publishes(cluster.create_database(), key, blocks)
    finally:
        cluster.stop()
    print_on_off(times)


if __name__ == "__main__":
    main(sys.argv[1:])
