"""An ended process's result, as its end recorded it (docs/DESIGN.md, invariant 15): a
`proc.end` record carries the digest of the result its row was given (`ends.RESULT_DIGEST`),
so a database writer who rewrites an ended row's result (no record touched) hands nobody
its text: whoever reads the row to hand the result on (a load of the ended process, which
`Kernel.wait` and a parent's `proc.wait` answer from, or the wait through the store for a
process another broker ran) checks it, and a mismatch is `ForgedResult`, recorded with an
`audit.anchor` record once by the reader (as `broker.kernel.revived` does), the result not
given. An end written before the digest existed binds nothing: its row is taken as stored;
an ended row no record made or ended was planted, and hands nothing either. `ps` shows such
a row without its result, marked `forged` (`checked_rows`)."""

from __future__ import annotations

from typing import Any

from broker.kernel.refused_images import MAX_TEXT
from broker.lifecycle import LIVE, State
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import ANCHOR_RECORD
from broker.store.ends import ENDED, result_digest
from broker.store.json_column import Unreadable
from broker.store.links import ChainLinks
from broker.store.vouch import Tampered


class ForgedResult(Tampered):
    """An ended process's row holds a result other than the one its end recorded."""


def row_state(pid: int, value: Any) -> State:
    """Process `pid`'s row's state; a value no state names (a writer's word: no end to check
    it by) makes the row unreadable, refused as such, not a failed open (red team 14)."""
    try:
        return State(value)
    except ValueError:
        raise Unreadable(f"process {pid}'s state cannot be read back ({str(value)[:40]!r}):"
                         " edited in the database") from None


def forged_result(store: SQLiteStore, pid: int, state: State, result: Any,
                  exit_code: Any = None) -> str | None:
    """Why `result`, read from ended process `pid`'s row, is not what its end recorded
    (recorded now: the caller keeps it, once), or None if it is (or nothing binds it)."""
    if state in LIVE:
        return None
    links = store.chain_links()
    links.walk()  # (only the records appended since the last walk)
    problem = result_problem(links, pid, result, exit_code)
    if problem is not None:
        store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                       detail={"problem": f"{problem}: not given"}))
    return problem


def result_problem(links: ChainLinks, pid: int, result: Any, exit_code: Any) -> str | None:
    """Why ended process `pid`'s row's `result` and `exit_code` are not what the walked chain
    says of it (nothing recorded), or None. A row no counted record made or ended (no spawn,
    no end) was planted: its result is nobody's (red team 14)."""
    bound = links.bound(pid)
    if bound is None:
        if links.recorded(pid):  # (an end from before digests: it binds nothing)
            return None
        return (f"process {pid}'s row is no process the chain records (no spawn made it, no "
                "end ended it): planted")
    digest, code = bound
    if digest is None:
        return (f"process {pid}'s end is not on a chain whole to the anchored head: its "
                "result binds nothing (a record rewritten in place)")
    if result_digest(result) != digest:
        return (f"process {pid}'s result in its row is not the one its end recorded "
                f"(sha256 {digest[:16]}...)")[:MAX_TEXT]
    if code != exit_code:  # (its code too: red team 14)
        return f"process {pid}'s exit code in its row is not the one its end recorded"
    return None


def checked_rows(store: SQLiteStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (the processes table, as `ps` lists them) with each ended row whose result or
    exit code its end does not vouch for (`result_problem`) shown without them and marked
    `forged`, as `ended_by` marks a row set live again. A read records nothing (a load that
    would hand the result on does, once); one walk of the records appended since the last,
    then a look-up per ended row."""
    ended = [row for row in rows if row["state"] in ENDED]
    if not ended:
        return rows
    links = store.chain_links()
    links.walk()
    for row in ended:
        problem = result_problem(links, row["pid"], row["result"], row["exit_code"])
        if problem is not None:
            row.update(result=None, exit_code=None, forged=problem)
    return rows


def loaded_end(store: SQLiteStore, pid: int, state: State, row: dict[str, Any]
               ) -> tuple[str | None, Any, Any]:
    """What a load of `pid` takes of its row's end: why its result is forged (or None), its
    exit code and its result. A live process has neither yet: one in its row is a writer's
    (nothing binds it), and taken it would be bound by the process's kill (red team 14)."""
    if state in LIVE:
        return None, None, None
    forged = forged_result(store, pid, state, row["result"], row["exit_code"])
    return forged, row["exit_code"], None if forged else row["result"]


def refuse_forged(problem: str | None) -> None:
    if problem is not None:
        raise ForgedResult(f"{problem}: it is not given")
