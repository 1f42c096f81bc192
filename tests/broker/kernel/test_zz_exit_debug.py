"""DEBUG copy (not committed)."""
from __future__ import annotations

import os, time

from broker import Kernel
from broker.kernel import exiting
from tests.broker.kernel.test_exit_commits import PROCESSES, _spawn_tickers
from tests.broker.kernel.test_step_commits import _transactions

LOG: list[str] = []
_orig = exiting.Exits.finish


async def _finish(self, proc, code, result):
    g = self.kernel.dispatcher.group
    LOG.append(f"{time.monotonic():.4f} finish pid={proc.pid} active={g.active} grouping={g.grouping}")
    return await _orig(self, proc, code, result)

exiting.Exits.finish = _finish


async def test_dbg(kernel: Kernel) -> None:
    LOG.clear()
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)
    pids = await _spawn_tickers(kernel)
    for pid in pids:
        await kernel.wait(pid)
    kernel.store._db.set_trace_callback(None)
    ending = [t for t in _transactions(statements)
              if any(s.startswith("UPDATE processes SET state='exited'") for s in t)]
    bad = False
    for writes in ending:
        exited = [s for s in writes if s.startswith("UPDATE processes SET state='exited'")]
        events = [s for s in writes if s.startswith("INSERT INTO events") and "exited" in s]
        if len(events) != len(exited):
            bad = True
    if bad or len(ending) >= PROCESSES:
        with open(f"/tmp/flaky/exitfail-{os.getpid()}-{time.time():.0f}.txt", "w") as f:
            f.write("\n".join(LOG) + "\n\n")
            f.write("\n".join(s[:200] for s in statements))
    assert not bad
    assert len(ending) < PROCESSES
