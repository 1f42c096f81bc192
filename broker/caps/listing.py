"""The check of a listing: a container (an Object Memory namespace) may be listed by a caller
whose capabilities cover it, or cover at least one member it could hold; either way the
listing shows only the members the caller could read, never what a deny rule or a narrower
scope leaves out."""

from __future__ import annotations

from collections.abc import Callable

from broker.caps.capability import CapSpec
from broker.caps.proof import _MINT, CheckedListing
from broker.caps.table import CapabilityTable, Decision, NeedsApproval, allowed
from broker.errors import NotCapable

Reaches = Callable[[str, str], bool]  # (scope, container) -> may it cover a member?


def check_listing(table: CapabilityTable, kind: str, right: str, container: str,
                  member: Callable[[str], str], reaches: Reaches, *, now: float,
                  manifests: tuple[tuple[CapSpec, ...], ...] = (),
                  args_hash: str | None = None) -> Decision:
    """Allow listing `container`: through a capability for the whole of it, else through the
    capabilities (inside every manifest) that reach some of its members. The proof's
    `visible(name)` says which members (named by `member(name)`) the caller may see."""
    kwargs = {"now": now, "manifests": manifests, "args_hash": args_hash}
    try:
        cap = table.decide(kind, right, container, **kwargs)  # type: ignore[arg-type]
    except NeedsApproval:
        raise
    except NotCapable:
        live = [c for c in table.caps() if c.kind == kind and right in c.rights
                and c.uses != 0 and (c.expires is None or c.expires > now)]
        if any(c.effect == "deny" and c.covers(kind, right, container) for c in live):
            raise  # a rule denies the container itself
        held = [c for c in live if c.effect != "deny" and c.args_hash is None
                and reaches(c.scope, container)]
        inside = all(any(m.kind == kind and right in m.rights and reaches(m.scope, container)
                         for m in manifest) for manifest in manifests)
        if not held or not inside:
            raise
        cap = next((c for c in held if c.uses is None), held[0])
    snapshot = CapabilityTable(table.pid, list(table))

    def visible(name: str) -> bool:
        try:
            snapshot.decide(kind, right, member(name), **kwargs)  # type: ignore[arg-type]
        except NeedsApproval:
            return True  # inside an `ask` scope: reading it would be put to a person
        except NotCapable:
            return False
        return True

    proof = CheckedListing(_MINT, kind, right, container, cap.id, visible, cap.scope)
    return allowed(proof, cap, table.attached(kind, right, container))
