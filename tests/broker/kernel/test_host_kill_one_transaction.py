"""Lane loose: the host's kill wrote its `proc.signal` record, then ended the rows in a
transaction of its own. A store that failed the rows and then the `rejected` record that
takes the kill back (or a crash between) left the chain saying killed while the process ran
on: the next open ended it. Now the record is written first in the transaction that ends the
rows: a kill the store refuses is neither done nor recorded as done (its refusal, with
`since`, takes back nothing), the process runs on across a reopen, and a kill once the store
heals ends it as before. Real SQLite made to fail by triggers (`faulty_store.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import AgentImage, Conflict, Kernel
from tests.broker.kernel.faulty_store import Fault

CAPS = ["clock:*:read"]
# The take-back fails too: inserts of `rejected` records, while the switch is on.
_NO_REFUSAL = ("CREATE TRIGGER fail_rejected BEFORE INSERT ON audit WHEN (SELECT failing FROM "
               "fault) AND NEW.phase = 'rejected' BEGIN SELECT RAISE(ABORT, 'disk full'); END")


def _kills(kernel: Kernel, pid: int) -> list[tuple[str, str]]:
    return [(r["syscall"], r["phase"]) for r in kernel.audit()
            if r["pid"] == pid and r["syscall"] in ("proc.signal", "proc.end")]


async def test_a_kill_whose_rows_fail_is_not_recorded_as_done(db_path: Path) -> None:
    with Fault(db_path) as fault:
        async with Kernel.open(db_path) as kernel:
            await kernel.register_image(AgentImage("a", tools=("now",), needs=tuple(CAPS)))
            victim, neighbour = kernel.spawn("a", caps=CAPS), kernel.spawn("a", caps=CAPS)
            fault.install(updates=("processes",))
            fault.other.execute(_NO_REFUSAL)
            fault.set(True)
            with pytest.raises(Conflict):
                kernel.kill(victim)
            fault.set(False)
            assert kernel.process(victim).alive
            assert _kills(kernel, victim) == []  # (it said: killed, with no take-back)
            kernel.kill(neighbour)  # the neighbour: a kill once the store heals
            assert _kills(kernel, neighbour) == [("proc.signal", "admin"),
                                                 ("proc.end", "admin")]
            assert kernel.verify_audit()[1] == []
    async with Kernel.open(db_path) as kernel:  # it ran on; it runs on
        assert await kernel.call_tool(victim, "now", {})
        assert kernel.process(victim).alive and not kernel.process(neighbour).alive
        kernel.kill(victim)
        assert not kernel.process(victim).alive
