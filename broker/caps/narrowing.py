"""Narrowing one set of capabilities to another.

Two jobs use it: a process that replaces its image (`proc.exec`) keeps only what the new
image declares, and an image made from a process (`image.commit`) declares only what its maker
holds. Both take the intersection of two specs, and the scope language is small enough that
the intersection is exact or nothing: when neither scope lies inside the other, nothing of
the pair survives (never a guess in the widening direction).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker.caps.capability import Capability, CapSpec, scope_within


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def intersect(held: CapSpec, bound: CapSpec) -> CapSpec | None:
    """What lies inside both `held` and `bound`, or None: the rights both have, whichever
    scope lies inside the other, the stricter effect (`ask` over `allow`), the fewer uses and
    the earlier expiry. Deny rules and used-up capabilities intersect with nothing (they
    allow nothing to narrow)."""
    if held.kind != bound.kind or "deny" in (held.effect, bound.effect):
        return None
    if held.uses == 0 or bound.uses == 0:
        return None
    rights = held.rights & bound.rights
    if not rights:
        return None
    if scope_within(held.kind, held.scope, bound.scope):
        scope = held.scope
    elif scope_within(held.kind, bound.scope, held.scope):
        scope = bound.scope
    else:
        return None
    effect = "ask" if "ask" in (held.effect, bound.effect) else "allow"
    uses = _least(held.uses, bound.uses)
    return CapSpec(held.kind, scope, frozenset(rights), effect,
                   None if uses is None else int(uses), _least(held.expires, bound.expires),
                   held.policy.meet(bound.policy))


def within_any(spec: CapSpec, bounds: Iterable[CapSpec | Capability]) -> bool:
    """Is `spec` a narrowing of one of `bounds` (deny rules and bound one-shots cover
    nothing)?"""
    return any(spec.within(b) for b in bounds
               if not (isinstance(b, Capability) and b.args_hash is not None))


@dataclass(slots=True)
class Narrowed:
    """What becomes of a process's capabilities when they narrow to `bounds`."""

    kept: list[Capability] = field(default_factory=list)  # already inside a bound
    # (the narrowing, the held capability it derives from: a revocation still reaches it)
    derived: list[tuple[CapSpec, Capability]] = field(default_factory=list)
    retired: list[Capability] = field(default_factory=list)  # out of use


def narrow_caps(held: Sequence[Capability], bounds: Sequence[CapSpec]) -> Narrowed:
    """Narrow each held capability to `bounds`: kept when it lies inside one, else replaced by
    its intersections with them (a counted capability's uses go to the first, never
    multiplied) and retired. Deny rules and capabilities already used up are kept as they
    are: they allow nothing."""
    out = Narrowed()
    for cap in held:
        if cap.effect == "deny" or cap.uses == 0 or within_any(cap, bounds):
            out.kept.append(cap)
            continue
        narrowed: list[CapSpec] = []
        for bound in bounds:
            spec = intersect(cap, bound)
            if spec is not None and spec not in narrowed:
                narrowed.append(spec)
        if cap.uses is not None:
            narrowed = narrowed[:1]  # counted uses move, never multiply
        out.derived += [(spec, cap) for spec in narrowed]
        out.retired.append(cap)
    return out


def narrow_needs(needs: Sequence[CapSpec], held: Sequence[CapSpec]) -> list[CapSpec]:
    """An image's declared needs, narrowed to what `held` covers (a process's capabilities,
    or a tool's manifest): each need inside one stays, any other becomes its intersections
    with them (or nothing)."""
    usable = [c for c in held if c.effect != "deny" and c.uses != 0
              and getattr(c, "args_hash", None) is None]
    out: list[CapSpec] = []
    for need in needs:
        found = [need] if within_any(need, usable) else [
            s for s in (intersect(c, need) for c in usable) if s is not None]
        out += [s for s in found if s not in out]
    return out
