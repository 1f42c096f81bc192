"""The ends of processes the audit chain records (docs/DESIGN.md, invariant 15): collected by
the links' walk (`broker.store.links.ChainLinks`), so a process row set live again after
its end (the database is anyone's who writes it) is never served: `broker.kernel.revived`.

What ends a process on the record:

* every end, whatever made it (a planner's exit, a kill by anyone or by a spent budget or a
  time limit, a failed step, a store's refusal, a spawn undone, whose grants were never
  stored): `proc.end`, phase `admin`, written in the transaction that stores the ended row
  (`end_record`; a group-committed exit's waits for the commit that carries its row, and one
  withdrawn is taken back: `end_taken_back`);
* a `proc.signal` kill a process made: its ok outcome (written once the kill is stored);
* the host's kill (`proc.signal`, phase `admin`): written first in the transaction that ends
  its rows (`tree_kill`; a refused one is not on the record, and its `rejected` record, with
  `since`, takes nothing back);
* the host's `host.exit`: recorded before the act, and followed by a `rejected` record of
  the same act when the act's store write failed (that record takes the end back).

Not an end: a `proc.exit` (it ends the process once its step returns, with its `proc.end`:
a crash before that commits resumes it, and it exits then), a pause or a resume, a
`proc.exec`, and the `state` events (not in the chain). A kill ends the live processes below
it too (`tree_kill`; each with its `proc.end` now, but not those an older broker killed):
one made (a `proc.spawn` outcome, a `host.fork`) before a kill of an ancestor was ended by
it, whatever its row says its parent is (the chain's lineage).

Only what the anchor vouches for counts (as for grants, `broker.store.capvouch`): the walk
keeps every end, take-back and birth with its seq, and `ended` weighs them as the caller's
`counts` says (a record past the anchored head, or in a `caps.unvouched` span, counts for
nothing); `seqs` are those records, for that note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from broker.store.audit import CLOSES, OPENS, WHOLE, AuditRecord, StoredRecord, canonical_json

SIGNAL, HOST_EXIT, SPAWN, FORK = "proc.signal", "host.exit", "proc.spawn", "host.fork"
HOST_SPAWN = "host.spawn"  # (with a fork: the host's records that make a process)
PROC_END = "proc.end"  # a process's end, written with its ended row
ENDING = (SIGNAL, HOST_EXIT, PROC_END)  # the records whose detail the walk reads for `ProcessEnds`
# (and the ones that make a child, read for their vouching: `capvouch.VOUCHING`)
END, TAKE_BACK = "end", "take back"
# An end whose digest binds a result: only where the chain is whole from it to the anchored
# head (as a take-back counts): one rewritten in place binds nothing (red team 16).
BINDS = "binds"
ENDED = frozenset({"exited", "killed"})  # a row's states that end it (`broker.lifecycle`)
MAX_REASON = 200  # the characters of an end's reason its record keeps
# In a `proc.end` record's detail: the sha256 of its row's result (`result_digest`), so a
# reader hands on only the result the end stored (`broker.kernel.end_result`).
RESULT_DIGEST = "result_sha256"
# Does the record at a seq count (as an end or birth, or, `TAKE_BACK`, as a refusal)?
Counts = Callable[[int, str], bool]


class ProcessEnds:
    """Process id -> the records that ended it or took an end back, as the walk meets them."""

    # The fields a walk fills (`broker.store.walk_memory` keeps them), not the weighings.
    KEPT = ("_acts", "_kills", "_born", "_made_at", "seqs", "ending", "_digests", "_codes")

    def __init__(self) -> None:
        # pid: [(seq, END or TAKE_BACK, act, a refusal's since)], in order
        self._acts: dict[int, list[tuple[int, str, str, int | None]]] = {}
        self._kills: dict[int, int] = {}  # a kill's intent (seq): the pid it names
        self._born: dict[int, list[tuple[int, int]]] = {}  # a child: [(parent, seq)]
        # a process: the host's records that made it (in the transaction that stored it)
        self._made_at: dict[int, list[int]] = {}
        self.seqs: list[int] = []  # every record kept above, in order
        self.ending: dict[int, int] = {}  # an end's seq: the pid it names
        self._digests: dict[int, str] = {}  # a `proc.end`'s seq: its result's digest
        self._codes: dict[int, Any] = {}  # and its exit code (None: it had none)
        # `ends` as weighed by each `counts` asked: each process's once (a kill's descendants
        # each ask for it again, and records forged past the head are weighed each time);
        # shared mode weighs two ways (`ChainLinks.held`).
        self._standing: dict[Counts, dict[int, list[tuple[int, str]]]] = {}
        self._lineages: dict[Counts, dict[int, list[int]]] = {}  # (`lineage`, kept so too)

    def see(self, stored: StoredRecord) -> None:
        r = stored.record
        detail = r.detail if isinstance(r.detail, dict) else {}
        if r.syscall in (SPAWN, FORK):
            self._lineages = {}
            self._see_birth(stored)
        elif r.syscall == HOST_SPAWN and r.phase == "admin" and _pid(r.pid) is not None:
            self._lineages = {}
            self._made_at.setdefault(r.pid, []).append(stored.seq)  # type: ignore[arg-type]
            self.seqs.append(stored.seq)
        if r.syscall not in ENDING:
            return
        if r.phase in ("admin", "rejected"):  # the host's act (`pid`: the process it ends)
            act, pid = r.syscall, _pid(r.pid)
            if pid is None or (act == SIGNAL and detail.get("signal") != "kill"):
                return
            since = detail.get("since")
            if act == PROC_END and isinstance(detail.get(RESULT_DIGEST), str):
                self._digests[stored.seq] = detail[RESULT_DIGEST]
                self._codes[stored.seq] = detail.get("code")  # (bound with it: red team 14)
            self._keep(pid, stored.seq, END if r.phase == "admin" else TAKE_BACK, act,
                       since if isinstance(since, int) else None)
            return
        if r.phase in OPENS:
            args = detail.get("args")
            target = _pid(args.get("pid")) if isinstance(args, dict) else None
            if target is not None and args.get("signal") == "kill":  # type: ignore[union-attr]
                self._kills[stored.seq] = target
        if r.phase in CLOSES:
            intent = stored.seq if r.phase == WHOLE else detail.get("intent")
            target = self._kills.pop(intent, None) if isinstance(intent, int) else None
            if target is not None and detail.get("ok") is True:
                self._keep(target, stored.seq, END, SIGNAL, None)

    def forget(self) -> None:
        """What `counts` says changed (new spans, new problems): weigh again."""
        self._standing, self._lineages = {}, {}

    def _keep(self, pid: int, seq: int, kind: str, act: str, since: int | None) -> None:
        self._acts.setdefault(pid, []).append((seq, kind, act, since))
        for standing in self._standing.values():
            standing.pop(pid, None)
        self.seqs.append(seq)
        if kind == END:
            self.ending[seq] = pid

    def _see_birth(self, stored: StoredRecord) -> None:
        parent, child = birth(stored)
        if parent is not None and child is not None:
            r = stored.record
            self._born.setdefault(child, []).append((parent, stored.seq))
            if r.syscall == FORK:  # (a child may run, and be killed, before its spawn's
                self._made_at.setdefault(child, []).append(stored.seq)  # outcome is written)
            self.seqs.append(stored.seq)

    def ends(self, pid: int, counts: Counts) -> list[tuple[int, str]]:
        """The (seq, act) of the ends of `pid` that stand, in order: each counted one, less
        those a counted refusal took back. A refusal means the last end of its act it
        recorded did not happen; `since`, the head before the act (its record, if any, came
        after it): one refused before any record of it takes back nothing. (Without it, an
        older broker's, one refused before its record takes back an earlier end of the same
        act.)"""
        standing = self._standing.setdefault(counts, {})
        if pid in standing:
            return standing[pid]
        ends: list[tuple[int, str]] = []
        for seq, kind, act, since in self._acts.get(pid, ()):
            if not counts(seq, kind):
                continue
            if kind == END:
                ends.append((seq, act))
                continue
            for i in range(len(ends) - 1, -1, -1):
                if ends[i][1] == act and (since is None or ends[i][0] > since):
                    del ends[i]
                    break
        standing[pid] = ends
        return ends

    def ended(self, pid: int, counts: Counts) -> int | None:
        """The seq of the first record that ended `pid`, if any: its own, else a kill of an
        ancestor after `pid` was made (by the first birth that counts)."""
        start = self._start(pid, counts)
        ends = [end for end in self.ends(pid, counts) if end[0] > start]
        if ends:
            return ends[0][0]
        made = self._made(pid, counts)
        if made is None:
            return None
        born, seen = made[1], {pid}
        while made is not None and made[0] not in seen:  # (a forged lineage may loop)
            ancestor = made[0]
            seen.add(ancestor)
            kills = [seq for seq, act in self.ends(ancestor, counts)
                     if act == SIGNAL and seq > born]
            if kills:
                return kills[0]
            made = self._made(ancestor, counts)
        return None

    def bound(self, pid: int, counts: Counts) -> tuple[str | None, Any] | None:
        """The result digest and exit code of the first `proc.end` of `pid` that stands,
        carries a digest and binds (`BINDS`); (None, None) if those that carry one bind
        nothing (the chain broken after them: failing closed); None if none carries one
        (older chains')."""
        start = self._start(pid, counts)
        carrying = [seq for seq, act in self.ends(pid, counts)
                    if seq > start and act == PROC_END and seq in self._digests]
        if not carrying:
            return None
        return next(((self._digests[seq], self._codes.get(seq)) for seq in carrying
                     if counts(seq, BINDS)), (None, None))

    def recorded(self, pid: int, counts: Counts) -> bool:
        """Does a counted record make `pid` (a spawn's outcome, the host's spawn or fork) or
        end it? A row none does is no process the chain knows: a writer planted it."""
        made = [seq for _, seq in self._born.get(pid, ())] + self._made_at.get(pid, [])
        return bool(self.ends(pid, counts)) or any(counts(seq, END) for seq in made)

    def lineage(self, counts: Counts) -> dict[int, list[int]]:
        """Each parent's children as the chain made them (each child's birth that counts),
        whatever the rows say their parents are (weighed once per `counts` until a birth or
        a change of what counts: a kill asks at each)."""
        children = self._lineages.get(counts)
        if children is None:
            children = self._lineages[counts] = {}
            for child in sorted(self._born):
                made = self._made(child, counts)
                if made is not None:
                    children.setdefault(made[0], []).append(child)
        return children

    def first_birth(self, pid: int) -> int:
        """The lowest seq of the records that made `pid` or any ancestor any of them names
        (counted or not, a pid given again too: the lower, the more it covers); 0 if one on
        the way has none. The records that can show the label a child inherits lie from there
        on (red team 18)."""
        first, seen, todo = None, set(), [pid]
        while todo:
            at = todo.pop()
            if at in seen:
                continue
            seen.add(at)
            births = self._born.get(at, [])
            seqs = [seq for _, seq in births] + self._made_at.get(at, [])
            if not seqs:
                return 0
            first = min(seqs) if first is None else min(first, *seqs)
            todo.extend(parent for parent, _ in births)
        return first or 0

    def _made(self, pid: int, counts: Counts) -> tuple[int, int] | None:
        start = self._start(pid, counts)
        return next((b for b in self._born.get(pid, ())
                     if b[1] >= start and counts(b[1], END)), None)

    def _start(self, pid: int, counts: Counts) -> int:
        """The last record that made `pid` (a pid the store gave again once its row was
        deleted: what ended the one before is not this one's end), counted as a refusal is
        (`TAKE_BACK`: only where the chain is whole from it, itself too, to the anchored head,
        since it takes ends away); 0 if none."""
        return next((seq for seq in reversed(self._made_at.get(pid, ()))
                     if counts(seq, TAKE_BACK)), 0)


def end_record(pid: int, fields: dict[str, Any]) -> AuditRecord:
    """The chained record of `pid`'s end, from its ended row's new `fields` (the audit a user
    expects too: "process 7 exited with 0")."""
    state = str(fields.get("state"))
    detail: dict[str, Any] = {"state": state}
    if fields.get("exit_code") is not None:
        detail["code"] = fields["exit_code"]
    if fields.get("reason") is not None and state != "exited":  # (an exit's: "exit {code}")
        # Text the chain can always hold: a record is never set aside (an end's row may be).
        reason = str(fields["reason"])[:MAX_REASON]
        detail["reason"] = reason.encode("utf-8", "replace").decode()
    if "result" in fields:  # (an end that leaves the row's result as it was binds none)
        detail[RESULT_DIGEST] = result_digest(fields["result"])
    return AuditRecord(phase="admin", syscall=PROC_END, pid=pid, detail=detail)


# The digests of the results most ends have (a kill's None, most exits' bool or small int),
# keyed by type too (True == 1): no encoding, no hashing at the exit.
_COMMON = {(type(value), value): hashlib.sha256(canonical_json(value).encode()).hexdigest()
           for value in (None, False, True, *range(-1, 256))}


def result_digest(result: Any) -> str:
    """The sha256 of a process row's result as canonical JSON: the same for the result an
    end stores and for the row read back (JSON text, its keys in any order)."""
    if type(result) in (type(None), bool, int):
        common = _COMMON.get((type(result), result))
        if common is not None:
            return common
    return hashlib.sha256(canonical_json(result).encode(errors="surrogatepass")).hexdigest()


def end_taken_back(pid: int, since: int) -> AuditRecord:
    """The refusal of an end recorded after `since` that was not written after all (a
    group-committed exit withdrawn: its row stayed live)."""
    return AuditRecord(phase="rejected", syscall=PROC_END, pid=pid,
                       detail={"since": since, "message": "its end was not stored"})


def birth(stored: StoredRecord) -> tuple[int | None, int | None]:
    """The (parent, child) a `proc.spawn` outcome or a `host.fork` record made, else Nones."""
    r = stored.record
    detail = r.detail if isinstance(r.detail, dict) else {}
    if r.syscall == SPAWN and r.phase in CLOSES and detail.get("ok") is True:
        return _pid(r.pid), _pid(detail.get("result"))
    if r.syscall == FORK and r.phase == "admin":
        return _pid(detail.get("source")), _pid(r.pid)
    return None, None


def _pid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
