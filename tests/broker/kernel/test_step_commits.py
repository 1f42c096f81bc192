"""What a scheduler step commits: the checkpoint before the step goes in one transaction with
the step's `tool.call` intent (group commit, `Connected.defer`), a read in one with its
outcome; the observation and the checkpoint after, in one of their own."""

from __future__ import annotations

import json

from broker import AgentImage, CallTool, Kernel, ScriptedPlanner

STEPS = 4


def _transactions(statements: list[str]) -> list[list[str]]:
    """The writes grouped by the commit that made them durable."""
    done: list[list[str]] = []
    current: list[str] | None = None
    for sql in statements:
        word = sql.split()[0].upper()
        if word == "BEGIN":
            current = []
        elif word == "COMMIT":
            assert current is not None
            done.append(current)
            current = None
        elif word in ("INSERT", "UPDATE", "DELETE"):
            if current is None:
                done.append([sql])  # autocommit
            else:
                current.append(sql)
    return done


def _audit(sql: str) -> str | None:
    """`phase syscall` of an audit insert (from its traced SQL), else None."""
    if not sql.startswith("INSERT INTO audit"):
        return None
    values = sql.split("VALUES (", 1)[1]
    fields = [f.strip().strip("'") for f in values.split(",")[5:7]]
    return " ".join(fields)


async def test_a_step_commits_its_checkpoint_with_its_intent(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    pid = kernel.spawn("ticker", caps=["clock:*:read"],
                       planner=ScriptedPlanner([CallTool("now", {})] * STEPS))
    await kernel.wait(pid)
    kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    steps = [t for t in _transactions(statements)
             if any("INTO checkpoints" in s and '"pending":{' in s for s in t)]
    assert len(steps) == STEPS
    for writes in steps:  # the checkpoint before, and the step's intent: one commit
        assert [_audit(s) for s in writes if _audit(s)] == ["intent tool.call"]
    reads = [t for t in _transactions(statements)
             if [_audit(s) for s in t] == ["intent clock.now", "outcome clock.now"]]
    assert len(reads) == STEPS
    # Each step: that commit, the read's, the call's outcome, the observation with the
    # checkpoint after (six before group commit and one commit per read).
    commits = _transactions(statements)
    first = commits.index(steps[0])
    last = max(i for i, t in enumerate(commits) if any("INTO observations" in s for s in t))
    assert last - first + 1 == 4 * STEPS
    latest = kernel.store.checkpoint(pid)
    assert latest is not None and json.dumps(latest["state"]["pending"]) == "null"
