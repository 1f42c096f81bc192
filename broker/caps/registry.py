"""All capabilities of a kernel: grants, attenuation, spending, revocation with descendants.

An ended process's capabilities leave the registry when the process leaves the kernel's memory
(`release`, from `broker.kernel.reaping`), all but those something still derives from: a
revocation of one of them, or of an ancestor, must still reach below. Those go once nothing
derives from them any more (`prune`). The store keeps them all; an ended process asked about
again has them back (`held_again`). After a restart the registry holds the same: the
capabilities of live processes and their ancestors (`load_capabilities(live=True)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from broker.caps.capability import Capability, CapSpec
from broker.caps.table import CapabilityTable, new_handle
from broker.errors import NotCapable, NotFound


class CapabilityRegistry:
    def __init__(self) -> None:
        self._tables: dict[int, CapabilityTable] = {}
        self._caps: dict[str, Capability] = {}
        self._children: dict[str, set[str]] = {}  # (never an empty set: see `_forget`)
        # Processes that left the kernel's memory whose tables still hold capabilities
        # something derives from (see the module).
        self._released: set[int] = set()

    def table(self, pid: int) -> CapabilityTable:
        table = self._tables.get(pid)
        if table is None:
            table = self._tables[pid] = CapabilityTable(pid)
        return table

    def held_again(self, pid: int, entries: Iterable[tuple[str, Capability]]
                   ) -> CapabilityTable:
        """The table of an ended process read back (asked about after it left memory):
        `entries`, its capabilities as the store has them; those still here stay as held."""
        for handle, cap in entries:
            if cap.id not in self._caps:
                self.load(cap, handle)
        self._released.discard(pid)
        return self.table(pid)

    def release(self, pids: Iterable[int]) -> None:
        """Ended processes left the kernel's memory: their capabilities leave the registry,
        but those something still derives from (see the module)."""
        for pid in pids:
            if pid in self._tables:
                self._released.add(pid)
        self.prune()

    def owners(self) -> list[int]:
        """The processes whose tables are here."""
        return list(self._tables)

    def prune(self) -> None:
        """Forget the capabilities of released processes that nothing derives from any more,
        up their lineage. (Never between a revocation and its undoing, when the store refused
        it: what it took goes back under parents that must still be here.)"""
        work = [cap for pid in self._released for cap in self._tables[pid].caps()]
        for pid in [p for p in self._released if not len(self._tables[p])]:
            self._released.discard(pid)
            del self._tables[pid]
        while work:
            cap = work.pop()
            if (cap.owner not in self._released or cap.id not in self._caps
                    or self.derives_from(cap.id)):
                continue
            self._forget(cap)
            parent = self._caps.get(cap.parent) if cap.parent else None
            if parent is not None:
                work.append(parent)

    def get(self, cap_id: str) -> Capability:
        cap = self._caps.get(cap_id)
        if cap is None:
            raise NotFound(f"no capability {cap_id}")
        return cap

    def load(self, cap: Capability, handle: str) -> None:
        """Put back a capability read from the store."""
        self._caps[cap.id] = cap
        if cap.parent:
            self._children.setdefault(cap.parent, set()).add(cap.id)
        self.table(cap.owner).add(cap, handle)

    def grant(
        self,
        pid: int,
        spec: CapSpec,
        *,
        parent: str | None = None,
        args_hash: str | None = None,
    ) -> tuple[str, Capability]:
        """Give `pid` a capability. Only the host (the root of authority) and code that has
        already proved the grant is a narrowing call this directly."""
        handle, cap = self.mint(pid, spec, parent=parent, args_hash=args_hash)
        self.load(cap, handle)
        return handle, cap

    @staticmethod
    def mint(pid: int, spec: CapSpec, *, parent: str | None = None,
             args_hash: str | None = None) -> tuple[str, Capability]:
        """A capability for `pid` and its handle, not yet held: `load` makes it usable, once
        the record of why it exists is durable (an approval's answer)."""
        cap = Capability(kind=spec.kind, scope=spec.scope, rights=spec.rights,
                         effect=spec.effect, uses=spec.uses, expires=spec.expires,
                         policy=spec.policy, owner=pid, parent=parent, args_hash=args_hash)
        return new_handle(), cap

    def covering(self, from_pid: int, spec: CapSpec, *,
                 from_handle: str | None = None) -> Capability:
        """The capability of `from_pid` that `spec` narrows (`NotCapable`: escalation)."""
        return self.table(from_pid).covering(spec, from_handle=from_handle)

    def derive(self, from_pid: int, to_pid: int, spec: CapSpec, *,
               from_handle: str | None = None) -> tuple[str, Capability]:
        """Attenuate: give `to_pid` a narrowing of a capability `from_pid` holds."""
        held = self.covering(from_pid, spec, from_handle=from_handle)
        return self.grant(to_pid, spec, parent=held.id)

    def inherit_denies(self, from_pid: int, to_pid: int) -> list[tuple[str, Capability]]:
        """A child carries its parent's deny rules, so no lineage can route around them."""
        return [
            self.grant(to_pid, cap, parent=cap.id)
            for cap in self.table(from_pid).caps()
            if cap.effect == "deny"
        ]

    def transfer(self, held: Capability, uses: int) -> Capability:
        """Hand `uses` of a counted capability to a narrowing of it: the holder keeps only
        the rest, so counted authority is split between parent and child, never multiplied.
        A holder left with none keeps its place (for lineage) but allows nothing."""
        updated = self.carve(held, uses)
        self.restore(updated)
        return updated

    def carve(self, held: Capability, uses: int) -> Capability:
        """`held` as `transfer` would leave it, not yet changed here (`restore` changes it)."""
        current = self._caps.get(held.id)
        if current is None or current.uses is None or current.uses < uses:
            raise NotCapable(f"escalation: capability has only "
                             f"{0 if current is None else current.uses} uses left to give")
        return replace(current, uses=current.uses - uses)

    def restore(self, cap: Capability) -> None:
        """Put back a held capability as it was before a change that was not stored."""
        if cap.id in self._caps:
            self._caps[cap.id] = cap
            self.table(cap.owner).replace(cap)

    def spend(self, cap: Capability) -> Capability | None:
        """Use one of a counted capability's uses. Returns the capability as it is now, or
        None once it is used up (and gone from its table). One used up that something derives
        from is kept with no uses left, as `retire` keeps one: revoking it, or an ancestor,
        still reaches below, and what derives from it keeps the parent its grant's record
        vouches for (`broker.store.capvouch`; the store keeps its row in the spend's
        transaction)."""
        current = self._caps.get(cap.id)
        if current is None or current.uses is None or current.uses < 1:
            raise NotCapable("capability already used up")
        if current.uses == 1 and not self.derives_from(current.id):
            self._forget(current)
            return None
        updated = replace(current, uses=current.uses - 1)
        self._caps[cap.id] = updated
        self.table(cap.owner).replace(updated)
        return updated

    def derives_from(self, cap_id: str) -> bool:
        """Does anything derive from this capability?"""
        return bool(self._children.get(cap_id))

    def retire(self, cap: Capability) -> Capability | None:
        """Take a held capability out of use (its holder no longer needs it): forgotten if
        nothing derives from it, else kept with no uses left, so it allows nothing but keeps
        its place in the lineage (revoking it, or an ancestor, still reaches below). Returns
        the capability as kept, or None when it is gone."""
        current = self._caps.get(cap.id)
        if current is None:
            return None
        if not self.derives_from(current.id):
            self._forget(current)
            return None
        updated = replace(current, uses=0)
        self._caps[current.id] = updated
        self.table(current.owner).replace(updated)
        return updated

    def revoke(self, cap_id: str, handles: dict[str, str] | None = None) -> list[Capability]:
        """Revoke a capability and everything derived from it, in every process. `handles`
        is given each one's handle (to `load` them back if the revocation is not stored)."""
        root = self.get(cap_id)
        gone: list[Capability] = []
        stack = [root.id]
        while stack:
            current = self._caps.get(stack.pop())
            if current is None:
                continue
            stack.extend(self._children.pop(current.id, ()))
            if handles is not None:
                handles[current.id] = self.table(current.owner).handle_of(current.id) or ""
            self._forget(current)
            gone.append(current)
        return gone

    def _forget(self, cap: Capability) -> None:
        self._caps.pop(cap.id, None)
        table = self._tables.get(cap.owner)
        if table is not None:
            table.drop(cap.id)
            if not len(table) and cap.owner in self._released:
                self._released.discard(cap.owner)
                del self._tables[cap.owner]
        siblings = self._children.get(cap.parent) if cap.parent else None
        if siblings is not None and cap.parent:
            siblings.discard(cap.id)
            if not siblings:  # (an empty set per capability that ever had a child would grow)
                del self._children[cap.parent]
