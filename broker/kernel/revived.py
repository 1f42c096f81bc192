"""A process whose end the audit chain records, its row set live again (the database is
anyone's who writes it; docs/DESIGN.md, invariant 15): not run. Whoever loads it (the open's
recovery, a lease's takeover, a look-up by pid later: all through `recovery.reload`) ends
it again and records that with an `audit.anchor` record, once: its row then says it ended.
The ends come from the links' one walk of the chain (`broker.store.ends`), no second pass,
and count only where the anchor vouches (an end forged past the signed head ends nothing).
In shared mode an end lacking its signature holds the process instead (`Held`)."""

from __future__ import annotations

from collections.abc import Iterable

from broker.kernel.refused_images import MAX_TEXT
from broker.lifecycle import LIVE, State
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import ANCHOR_RECORD
from broker.store.vouch import Tampered


class Revived(Tampered):
    """A process the chain recorded ended, stored live again: ended again, and recorded."""


class Held(Tampered):
    """Shared mode: a live process an unsigned record past the chain's `audit.signed`
    marker would end (`ChainLinks.held`): neither ended (the record's reason or result is
    never taken, its writer unknown) nor run, and its row left as it is until the host kills
    it (`tree_kill`: its own signed act); the open's `caps.unsigned` note names it, once
    (`RecordSignatures.note`)."""


def refuse_revived(store: SQLiteStore, pid: int, state: State) -> None:
    """`Revived` (the process ended again and recorded) if `pid`'s row says `state`, a live
    one, and the chain records its end."""
    if state not in LIVE:
        return
    seq = recorded_ends(store, [pid]).get(pid)
    if seq is None:
        held = store.chain_links().held(pid)  # (walked by recorded_ends just now)
        if held is not None:
            raise Held(f"process {pid} is held for an unsigned end: record {held} would end "
                       "it but carries no signature by a key trusted here; it is not run")
        return
    problem = (f"process {pid} was ended by record {seq}, but its row says {state.value}"
               )[:MAX_TEXT]
    store.update_process(pid, state=State.KILLED, reason=f"revived: {problem}"[:MAX_TEXT])
    store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                   detail={"problem": f"{problem}: ended again"}))
    raise Revived(f"{problem}: it is not run")


def held_ends(store: SQLiteStore, pids: Iterable[int]) -> dict[int, int]:
    """Of `pids` (rows that say they are live, no counted end), those a shared broker holds
    (`Held`), each with the seq of the unsigned record that would end it, as a shared open
    counts (`AuditReads.shared_links`: a walk of its own, only of a chain brokers shared):
    what `libos ps` shows held. Shared means a marker signed by a key trusted here
    (`RecordSignatures.signed_marker`): on PostgreSQL a reader cannot tell a single broker's
    store (which holds nothing) from a shared one otherwise, and a writer's marker is not
    signed (red team 22)."""
    pids = list(pids)
    links = store.shared_links() if pids else None
    if links is None:
        return {}
    links.walk()
    if links.signatures is None or not links.signatures.signed_marker:
        return {}
    return {pid: seq for pid in pids if (seq := links.held(pid)) is not None}


def recorded_ends(store: SQLiteStore, pids: Iterable[int]) -> dict[int, int]:
    """Of `pids` (rows that say they are live), those whose end the chain records, each with
    the seq of that record: what a load refuses to run (`refuse_revived`), and `libos ps`
    shows so. Counted as the store's links count them: a writer's only up to its own head; a
    reader's (no lock, no anchor of its own) every end on a chain whole up to it."""
    pids = list(pids)
    if not pids:  # (nothing to look up: `libos ps` with no live row reads no chain)
        return {}
    links = store.chain_links()
    links.walk()  # (only the records appended since the last walk)
    return {pid: seq for pid in pids if (seq := links.ended(pid)) is not None}
