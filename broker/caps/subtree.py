"""A check over a whole subtree: what a recursive remove of a directory takes away.

Removing `/work` recursively takes everything beneath it, so checking `/work` alone is not
enough: a deny rule on `/work/keep/**` would not hold, and a capability naming only the
directory (`/work`, exactly) would reach files it covers none of (red team 44). The subtree
check asks two more questions, in the check step: is every path beneath allowed by one
capability (the one that allows a name no scope spells out, which only a subtree or prefix
pattern covers), and does no deny rule cover a path beneath?
"""

from __future__ import annotations

from broker.caps.labels import PUBLIC, Labels
from broker.caps.proof import CheckedPath
from broker.caps.scope import _under
from broker.caps.table import CapabilityTable, CapSpec, NeedsApproval
from broker.errors import NotCapable

# A child name no scope can hold (scopes refuse NUL): only a scope covering every path below
# the directory covers it, so `decide` on it answers for the whole subtree, with its own
# rules for uses, expiry, arguments, labels and manifests.
_ANY_CHILD = "\x00"


def _beneath(scope: str, base: str) -> bool:
    """Does `scope` cover some path strictly beneath the directory `base`?"""
    inside = base.rstrip("/") + "/"
    if scope.endswith("/**"):
        directory = scope[:-3] or "/"
        return _under(directory, base) or _under(base, directory)
    if scope.endswith("*"):
        prefix = scope[:-1]
        return prefix.startswith(inside) or inside.startswith(prefix)
    return scope.startswith(inside)


def check_subtree(table: CapabilityTable, proof: CheckedPath, *, now: float,
                  manifests: tuple[tuple[CapSpec, ...], ...] = (),
                  args_hash: str | None = None, labels: Labels = PUBLIC) -> None:
    """`NotCapable` unless every path beneath the checked directory may be acted on with the
    proof's right: one capability covers them all (or a person approved exactly this call)
    and no deny rule covers any of them."""
    kind, right, base = proof.kind, proof.right, proof.resource
    for cap in table.caps():
        if (cap.effect == "deny" and cap.kind == kind and right in cap.rights
                and (cap.expires is None or cap.expires > now) and _beneath(cap.scope, base)):
            raise NotCapable(f"fs:{right} beneath {base!r}: a deny rule protects "
                             f"{cap.scope!r} there", resource=base)
    child = base.rstrip("/") + "/" + _ANY_CHILD
    try:
        table.decide(kind, right, child, now=now, manifests=manifests, args_hash=args_hash,
                     labels=labels)
    except NeedsApproval:
        # A grant a person made for exactly these arguments (recursive included) stands.
        handle = table.handle_of(proof.cap_id)
        if handle is None or table.get(handle).args_hash is None:
            raise NotCapable(f"fs:{right} on everything beneath {base!r} needs a capability "
                             "that allows it without asking", resource=base) from None
    except NotCapable:
        raise NotCapable(f"fs:{right} on everything beneath {base!r}: no capability covers "
                         "the whole subtree", resource=base) from None
