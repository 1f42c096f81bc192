"""Capabilities: a resource kind + scope + rights + effect, with optional uses and expiry."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from broker.caps import host_scope, obj_scope, shell_scope
from broker.caps.labels import NO_POLICY, LabelPolicy
from broker.caps.scope import is_subscope, matches, validate_scope
from broker.errors import InvalidArgument

Effect = Literal["allow", "ask", "deny"]
EFFECTS: tuple[str, ...] = ("allow", "ask", "deny")

# The rights each builtin resource kind knows. A right outside this table is an invalid
# argument, so a typo can never become a capability that matches nothing (or everything).
# Any other well-formed kind is a host tool's own (`host_scope`), with rights of its own.
RIGHTS: dict[str, frozenset[str]] = {
    # `link`: files with more than one name (hard links) may be read or written here.
    "fs": frozenset({"read", "write", "link"}),
    "obj": frozenset({"read", "write"}),
    "tool": frozenset({"call", "register"}),
    "proc": frozenset({"spawn", "signal", "message", "exec"}),
    "clock": frozenset({"read", "sleep"}),
    "shell": frozenset({"run"}),
    "net": frozenset({"fetch"}),
    "human": frozenset({"ask"}),
    "image": frozenset({"register"}),
}


def scope_covers(kind: str, scope: str, resource: str, *, deny: bool = False) -> bool:
    """Does a scope of `kind` cover `resource`? A shell scope also names the variables it
    allows, and a deny rule's variables are conditions (`shell_scope`)."""
    if kind == "shell":
        return shell_scope.matches(scope, resource, deny=deny)
    if kind == "obj":
        return obj_scope.matches(scope, resource)
    if kind not in RIGHTS:  # a host tool's kind (`host_scope`)
        return host_scope.matches(scope, resource)
    return matches(scope, resource)


def scope_within(kind: str, inner: str, outer: str) -> bool:
    """Is every resource a scope of `kind` covers also covered by `outer`?"""
    if kind == "shell":
        return shell_scope.is_subscope(inner, outer)
    if kind == "obj":
        return obj_scope.is_subscope(inner, outer)
    if kind not in RIGHTS:
        return host_scope.is_subscope(inner, outer)
    return is_subscope(inner, outer)


def new_capability_id() -> str:
    return "cap_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class CapSpec:
    """What someone asks for: a capability not yet bound to an owner or an id."""

    kind: str
    scope: str
    rights: frozenset[str]
    effect: Effect = "allow"
    uses: int | None = None
    expires: float | None = None
    # Information-flow labels (`broker.caps.labels`): attached to results, bounds on inputs.
    policy: LabelPolicy = NO_POLICY

    # Anyone may ask only for a positive count; a held capability can be down to zero after
    # handing its uses to children (it stays, for lineage, and allows nothing).
    MIN_USES: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.kind not in RIGHTS and not host_scope.is_host_kind(self.kind):
            raise InvalidArgument(f"unknown resource kind {str(self.kind)[:40]!r}")
        validate_scope(self.scope)
        if not self.rights:
            raise InvalidArgument("a capability needs at least one right")
        if self.kind in RIGHTS:
            unknown = self.rights - RIGHTS[self.kind]
            if unknown:
                raise InvalidArgument(f"unknown rights {sorted(unknown)} for kind {self.kind!r}")
        else:  # a host tool's own kind: an open set of names (`host_scope`)
            host_scope.check_rights(self.kind, self.rights)
        if self.effect not in EFFECTS:
            raise InvalidArgument(f"unknown effect {self.effect!r}")
        # (a bool is an int to Python: `true` is no count of uses, nor a time)
        if self.uses is not None and (not isinstance(self.uses, int)
                                      or isinstance(self.uses, bool)
                                      or self.uses < self.MIN_USES):
            raise InvalidArgument("uses must be a positive integer")
        if isinstance(self.expires, bool):
            raise InvalidArgument("expires must be a number")
        if isinstance(self.expires, int):  # a time is stored, read back and digested a float
            try:
                object.__setattr__(self, "expires", float(self.expires))
            except OverflowError:
                raise InvalidArgument("expires is out of range") from None
        if isinstance(self.expires, float) and math.isnan(self.expires):
            # NaN compares false both ways: it would pass `within` and never expire.
            raise InvalidArgument("expires must be a number, not NaN")

    @classmethod
    def parse(cls, value: Any) -> CapSpec:
        """From the wire or a config: {"kind", "scope", "rights", "effect"?, "uses"?,
        "expires"?, "labels"?, "flows"?} or the short form "kind:scope:right1,right2"."""
        if isinstance(value, CapSpec):
            return value
        if isinstance(value, str):
            kind, sep, rest = value.partition(":")
            scope, sep2, rights = rest.rpartition(":")
            if not sep or not sep2:
                raise InvalidArgument(f"capability {value!r} is not kind:scope:rights")
            return cls(kind, scope, frozenset(rights.split(",")))
        if not isinstance(value, dict):
            raise InvalidArgument("a capability must be a map or a kind:scope:rights string")
        unknown = set(value) - {"kind", "scope", "rights", "effect", "uses", "expires",
                                "labels", "flows", "lifted"}
        if unknown:
            raise InvalidArgument(f"unknown capability fields {sorted(unknown)}")
        try:
            rights = value["rights"]
            if isinstance(rights, str) or not all(isinstance(r, str) for r in rights):
                raise InvalidArgument("rights must be a list of strings")
            expires = value.get("expires")
            if expires is not None and (not isinstance(expires, int | float)
                                        or isinstance(expires, bool)):
                raise InvalidArgument("expires must be a number")
            return cls(
                kind=value["kind"],
                scope=value["scope"],
                rights=frozenset(rights),
                effect=value.get("effect", "allow"),
                uses=value.get("uses"),
                expires=None if expires is None else float(expires),
                policy=LabelPolicy.parse(value.get("labels"), value.get("flows"),
                                         value.get("lifted")),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidArgument(f"malformed capability: {exc}") from None

    def covers(self, kind: str, right: str, resource: str) -> bool:
        return kind == self.kind and right in self.rights and scope_covers(
            kind, self.scope, resource, deny=self.effect == "deny")

    def within(self, other: CapSpec | Capability, *, answered: bool = False) -> bool:
        """Is this spec a narrowing of `other` (same kind, fewer or equal rights, inner scope,
        no weaker effect, no longer life, no more uses)? The one rule for every derivation:
        spawn, fork, attenuation, a tool's manifest, and a person's answer to a request that
        `other` (an `ask` capability) raised. `answered` lets that answer turn `ask` into
        `allow`, and nothing else: its grant keeps the asking capability's life and uses."""
        if self.kind != other.kind or not self.rights <= other.rights:
            return False
        if not scope_within(self.kind, self.scope, other.scope):
            return False
        if other.effect == "deny" or (
                other.effect == "ask" and self.effect == "allow" and not answered):
            return False
        if other.expires is not None and (self.expires is None or self.expires > other.expires):
            return False
        if not self.policy.within(other.policy, answered=answered):
            return False  # dropping a source's labels or loosening a sink's bound widens
        return other.uses is None or (self.uses is not None and self.uses <= other.uses)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "scope": self.scope,
            "rights": sorted(self.rights),
            "effect": self.effect,
        }
        if self.uses is not None:
            out["uses"] = self.uses
        if self.expires is not None:
            out["expires"] = self.expires
        if not self.policy.empty:
            out.update(self.policy.to_wire())
        return out


@dataclass(frozen=True, slots=True)
class Capability(CapSpec):
    """A capability held by a process: a spec with an id, an owner and a lineage."""

    id: str = field(default_factory=new_capability_id)
    owner: int = 0
    parent: str | None = None
    # Bound arguments: a one-shot approval covers exactly these (by hash), nothing else.
    args_hash: str | None = None

    MIN_USES: ClassVar[int] = 0

    def with_uses(self, uses: int | None) -> Capability:
        return replace(self, uses=uses)

    def to_wire(self) -> dict[str, Any]:
        out = CapSpec.to_wire(self)
        out["id"] = self.id
        if self.parent:
            out["parent"] = self.parent
        if self.args_hash:
            out["args_hash"] = self.args_hash
        return out
