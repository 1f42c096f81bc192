"""Which control requests left in the store (`libos pause/resume/kill/fork`, a row anyone who
writes the database may write) a broker applies: only one signed by a key it trusts, made
for this store, fresh, and not applied before (`broker.store.control_sig`). The check of the
operator's authority for this channel, before `Controls` acts.

Each request taken is an audit record (`control.request`, `via: store`): `admin` when it is
admitted (its nonce spent; what applying it did is the act's own record), `rejected` with the
typed error that refused it. Replay: a request is fresh for `WINDOW` seconds either side of
the broker's clock (clock skew between the CLI's host and the broker's), and the nonces
admitted within that window are read from the chain's `admin` records, where a database writer
cannot take them away without breaking the chain (`libos audit --verify`, the signed anchor),
never from a table: a copy of an old request inserted again is refused, by any broker. A
request is admitted only while the chain is whole where its record would lie (`_whole_since`):
a break there, a copy's evidence perhaps taken away, refuses it.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from broker.errors import Conflict, LibosError, NotCapable
from broker.kernel.faults import STORE_FAULTS
from broker.store import control_sig, recordsig, signing
from broker.store.audit import CONTROL_RECORD, AuditRecord, storable_pid

if TYPE_CHECKING:
    from broker.kernel.ports import HasStore

WINDOW = control_sig.WINDOW  # seconds a signed request stays fresh, either side of its clock
# Seconds the records after a request's own may be stamped before it: another broker's clock
# (shared mode), or a clock stepped back, taken to lag by up to the skew the window allows.
LAG = WINDOW
MAX_WHO = 128


class ControlRequests:
    def __init__(self, kernel: HasStore) -> None:
        self.kernel = kernel
        self._read = 0  # the chain's seq up to which its control records were read
        self._spent: set[str] = set()  # the nonces of the requests admitted, still fresh
        self._break_times: dict[int, float] = {}  # a break's seq: its first intact record's time

    def admit(self, control: dict[str, Any]) -> None:
        """Check `control` (as `take_controls` gives it) and record it: admitted, or refused
        with why (then raised, typed)."""
        detail = {"verb": str(control["verb"])[:32], "via": "store", "who": _who(control)}
        signed = control_sig.parse(control.get("sig"))
        if signed is not None:
            detail["key"] = signed.key
        try:
            signed = self._check(control, signed)
        except LibosError as exc:
            with suppress(*STORE_FAULTS):  # (the refusal stands, recorded or not)
                self._record("rejected", control, {**detail, "error": exc.code,
                                                   "message": exc.message})
            raise
        created = float(control["created"])
        self._record("admin", control, {**detail, "nonce": signed.nonce, "created": created})
        self._spent.add(signed.nonce)

    def _check(self, control: dict[str, Any],
               signed: control_sig.Signed | None) -> control_sig.Signed:
        store = self.kernel.store
        verb, pid, text, created = (control[k] for k in ("verb", "pid", "arg_text", "created"))
        signed = signed_for(store, signed, "request")
        if not (type(verb) is str and (pid is None or type(pid) is int)
                and (text is None or type(text) is str) and type(created) in (int, float)
                and signed.holds(store.identity, verb, pid, text, created)):
            raise NotCapable("the request's signature does not hold: altered since it was"
                             " signed")
        age = float(control["taken"]) - float(created)
        if abs(age) > WINDOW:
            raise Conflict(f"the request is stale: made {age:.0f} s before this broker took it"
                           f" by its clock (a request holds for {WINDOW:.0f} s either side)")
        self._catch_up(float(control["taken"]))
        if signed.nonce in self._spent:
            raise Conflict("the request was applied before: a copy inserted again is refused")
        self._whole_since(float(created) - WINDOW - LAG)
        return signed

    def _whole_since(self, since: float) -> None:
        """Refuse unless the chain is whole over the records a request made at `since` +
        `WINDOW` + `LAG` could have been admitted in (from `since` on): the nonces are read
        from it, and a writer who removed or edited the record of one applied (breaking the
        chain, or hashing it again past its anchor) would have its copy applied again. A break
        counts by the time of the first intact record at or after it (a broken record's own
        time is the writer's): one older than that says nothing of this request, so an old
        break never refuses the operator's fresh requests (red team 18's lesson)."""
        store = self.kernel.store
        links = store.chain_links()
        links.walk()  # (only the records appended since the last walk)
        breaks, broken = links.breaks()
        walked = links.linked[0]
        above: float | None = None  # the first intact record's time of the break above
        for at, seq in enumerate(reversed(breaks)):  # (newest first)
            if seq not in self._break_times:  # (as walked: fixed once found)
                found = _first_intact(store.record_times(seq - 1, 2), broken, walked,
                                      breaks[-at] if at else None, above)
                if found is not None:
                    self._break_times[seq] = found
            above = self._break_times.get(seq)
            if above is None or above >= since:
                raise Conflict(
                    f"the audit chain is broken at record {seq}, among the records of the"
                    f" {WINDOW + LAG:.0f} s before the request was made: the record of a"
                    " request applied there may be gone, so none made then is admitted"
                    " (`libos audit --verify` names the break; a request made once those"
                    " records are older is)")

    def _catch_up(self, now: float) -> None:
        """Read the nonces admitted since the last look from the chain, but those of requests
        already stale by this clock (a copy of one is refused as stale). One kept is never
        forgotten while the broker runs: forgetting it by a clock stepped ahead would let its
        copy through once the clock is set back (red team 19); the operator's requests are
        few, and the chain has every one of them anyway."""
        linked = self.kernel.store.linked_seq  # (the mark stays on the chain: `linked_seq`)
        for seq, detail in self.kernel.store.control_records(self._read):
            self._read = max(self._read, min(seq, linked))
            nonce, created = detail.get("nonce"), detail.get("created")
            if (isinstance(nonce, str) and type(created) in (int, float)
                    and created >= now - WINDOW):
                self._spent.add(nonce)

    def _record(self, phase: str, control: dict[str, Any], detail: dict[str, Any]) -> None:
        pid = storable_pid(control["pid"])
        self.kernel.store.append_audit(AuditRecord(
            phase=phase, syscall=CONTROL_RECORD, pid=pid,
            resource=None if pid is None else str(pid), detail=detail))


def _first_intact(rows: list[tuple[int, float]], broken: frozenset[int], walked: int,
                  above: int | None, above_time: float | None) -> float | None:
    """The time of the first intact record of `rows` (the two from a break's seq on: every
    problem is a break, so only the first may be broken before the next break, `above`,
    whose first intact record, at `above_time`, is this one's too); None: none walked yet,
    or none at all."""
    for seq, ts in rows:
        if above is not None and seq >= above:
            return above_time
        if seq > walked:
            return None
        if seq not in broken:
            return ts
    return None


def signed_for(store: Any, signed: control_sig.Signed | None,
               what: str) -> control_sig.Signed:
    """`signed`, if a key this broker trusts signed it for `store` (the signature itself is the
    caller's to check, over its own fields); else `NotCapable`, saying which failed."""
    if signed is None:
        raise NotCapable(f"the {what} is not signed: a row written without a key (`libos`"
                         " signs each with its user's audit key)")
    if signed.key not in recordsig.trusted_keys(store.signer):
        raise NotCapable(f"the {what} is signed by key {signing.fingerprint(signed.key)},"
                         " which this broker does not trust (`libos keys trust`)")
    if signed.store != control_sig.store_digest(store.identity):
        raise NotCapable(f"the {what} was made for another store")
    return signed


def _who(control: dict[str, Any]) -> str:
    """Who the request says asked: a claim, for the record (`cli` for `libos`'s own)."""
    arg = control.get("arg")
    return str(arg.get("who", "cli"))[:MAX_WHO] if isinstance(arg, dict) else "cli"
