"""Information-flow labels: what data is (`secret`, `untrusted`), where it may flow.

A label set is a frozenset of names; the empty set is `public`, and joining is union. Coarse
on purpose: a process carries one context label (the join of all its planner has seen), a tool
invocation one (the join of what its syscalls returned), never a label per byte.

A capability may carry a `LabelPolicy`:
  - `attach`: labels given to whatever a call it allows returns (a source: `secret` on
    `fs:/secrets/**`, `untrusted` on `net:**`);
  - `flows`: a bound on the labels of the caller's data flowing into a call it allows (a sink):
    label → `deny` or `ask`; the label `*` stands for any label (`{"*": "deny"}`: only public
    data may flow here).

A `LabelRule` is the same kind of source given when the kernel opens: labels for every result
of `kind` on a resource its scope covers, whatever capability allowed the call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.caps.host_scope import is_host_kind
from broker.caps.scope import validate_scope
from broker.errors import InvalidArgument

Labels = frozenset[str]
PUBLIC: Labels = frozenset()
ANY = "*"
MAX_LABELS = 32
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}
FLOW_EFFECTS = ("ask", "deny")


def parse_labels(value: Any, what: str = "labels") -> Labels:
    """A list of label names from the wire or a config; `InvalidArgument` for anything else."""
    if value is None:
        return PUBLIC
    if not isinstance(value, list | tuple | set | frozenset):
        raise InvalidArgument(f"{what} must be a list of label names")
    names = list(value)
    if len(names) > MAX_LABELS:
        raise InvalidArgument(f"{what}: at most {MAX_LABELS} labels")
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "public":
            raise InvalidArgument(f"{what}: {str(name)[:70]!r} is not a label name "
                                  f"(lower case letters, digits, _ . -; `public` is no label)")
    return frozenset(names)


def show(labels: Iterable[str]) -> str:
    """A label set as people read it."""
    names = sorted(labels)
    return ",".join(names) if names else "public"


@dataclass(frozen=True, slots=True)
class LabelPolicy:
    attach: Labels = PUBLIC
    flows: tuple[tuple[str, str], ...] = ()  # sorted (label, "ask" | "deny")
    # Labels a person declassified here (an approval's grant): its `ask` bounds allow them,
    # and only them (an `ask` on `*` still asks about any other label).
    lifted: Labels = PUBLIC

    @classmethod
    def parse(cls, attach: Any = None, flows: Any = None, lifted: Any = None) -> LabelPolicy:
        bound: dict[str, str] = {}
        if flows is not None:
            if not isinstance(flows, Mapping):
                raise InvalidArgument("flows must map label names (or *) to ask or deny")
            if len(flows) > MAX_LABELS:
                raise InvalidArgument(f"flows: at most {MAX_LABELS} labels")
            for label, effect in flows.items():
                if label != ANY:
                    parse_labels([label], "flows")
                if effect not in FLOW_EFFECTS:
                    raise InvalidArgument(f"flows: {str(effect)[:20]!r} is not ask or deny")
                bound[label] = effect
        if attach is None and not bound and not lifted:
            return NO_POLICY
        return cls(parse_labels(attach, "labels"), tuple(sorted(bound.items())),
                   parse_labels(lifted, "lifted"))

    @property
    def empty(self) -> bool:
        return not self.attach and not self.flows and not self.lifted

    def effect_for(self, label: str) -> str:
        """How this bound treats data labelled `label`: allow, ask or deny."""
        effect = "allow"
        for name, bound in self.flows:
            if bound == "ask" and label in self.lifted:
                continue  # a person approved exactly this label's flow here
            if name in (label, ANY) and _STRICTNESS[bound] > _STRICTNESS[effect]:
                effect = bound
        return effect

    def verdict(self, labels: Labels) -> tuple[str, Labels]:
        """(`allow` | `ask` | `deny`, the labels that decided it) for data labelled `labels`."""
        if not self.flows or not labels:
            return "allow", PUBLIC
        worst, why = "allow", set()
        for label in labels:
            effect = self.effect_for(label)
            if _STRICTNESS[effect] > _STRICTNESS[worst]:
                worst, why = effect, {label}
            elif effect == worst and effect != "allow":
                why.add(label)
        return worst, frozenset(why)

    def within(self, outer: LabelPolicy, *, answered: bool = False) -> bool:
        """Is this policy a narrowing of `outer`: every label `outer` attaches still attached,
        every bound at least as strict? `answered`: a person's answer may turn `ask` into
        `allow` (the declassification they approved), never a `deny`."""
        if not outer.attach <= self.attach:
            return False
        names = {label for label, _ in outer.flows} | self.lifted | outer.lifted
        for label in names:
            effect = outer.effect_for(label)
            mine = self.effect_for(label)
            needed = "allow" if answered and effect == "ask" else effect
            if _STRICTNESS[mine] < _STRICTNESS[needed]:
                return False
        return True

    def answered(self, labels: Labels) -> LabelPolicy:
        """This policy after a person approved a flow of data labelled `labels`: its `ask`
        bounds lifted for those labels only (what the person was shown), never a `deny`."""
        return LabelPolicy(self.attach, self.flows, self.lifted | labels)

    def meet(self, other: LabelPolicy) -> LabelPolicy:
        """The policy of the intersection of two capabilities: both sources, both bounds."""
        merged = dict(self.flows)
        for label, effect in other.flows:
            if _STRICTNESS[effect] > _STRICTNESS[merged.get(label, "allow")]:
                merged[label] = effect
        # Declassified in the intersection only what each side lets flow.
        lifted = frozenset(label for label in self.lifted | other.lifted
                           if self.effect_for(label) == other.effect_for(label) == "allow")
        return LabelPolicy(self.attach | other.attach, tuple(sorted(merged.items())), lifted)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.attach:
            out["labels"] = sorted(self.attach)
        if self.flows:
            out["flows"] = dict(self.flows)
        if self.lifted:
            out["lifted"] = sorted(self.lifted)
        return out

    @classmethod
    def from_wire(cls, value: Mapping[str, Any] | None) -> LabelPolicy:
        if not value:
            return NO_POLICY
        return cls.parse(value.get("labels"), value.get("flows"), value.get("lifted"))


NO_POLICY = LabelPolicy()


@dataclass(frozen=True, slots=True)
class LabelRule:
    """Given at `Kernel.open`: results of `kind` calls on resources `scope` covers carry
    `labels`, whatever capability allowed them."""

    kind: str
    scope: str
    labels: Labels

    @classmethod
    def parse(cls, value: Any) -> LabelRule:
        if isinstance(value, LabelRule):
            return value
        if not isinstance(value, Mapping) or set(value) - {"kind", "scope", "labels"}:
            raise InvalidArgument("a label rule is {kind, scope, labels}")
        kind, scope = value.get("kind"), value.get("scope", "**")
        if not isinstance(kind, str) or not isinstance(scope, str):
            raise InvalidArgument("a label rule needs a kind and a scope")
        # A rule that can never match fails open (it labels nothing), unlike a capability
        # that covers nothing: a misspelt kind or a path no resource is named by is refused.
        if not is_host_kind(kind):
            raise InvalidArgument(f"label rule: {kind[:40]!r} is not a kind (a lowercase name)")
        if kind == "fs" and scope not in ("*", "**", "/") and (
                not scope.startswith("/") or any(
                    part in ("", ".", "..") for part in scope.split("/")[1:])):
            raise InvalidArgument(f"label rule: {scope[:70]!r} is not an absolute, normal "
                                  "path pattern (/a/**)")
        labels = parse_labels(value.get("labels"), "label rule")
        if not labels:
            raise InvalidArgument("a label rule needs at least one label")
        return cls(kind, validate_scope(scope), labels)


def _literal(scope: str) -> str:
    """What a scope names before its first wildcard."""
    cut = min((i for i in (scope.find(c) for c in "*?[{") if i >= 0), default=len(scope))
    return scope[:cut]


def inherited_sources(kind: str, scope: str, held: Iterable[Any]) -> Labels:
    """The labels that capabilities `held` (a parent's) attach to anything a new capability of
    `kind` on `scope` may reach: a child narrowing a broad plain capability still gets what a
    labelled one its parent holds says of the same data. Over-approximate: two scopes may
    overlap when what one names before its first wildcard starts what the other names."""
    mine = _literal(scope)
    labels = PUBLIC
    for cap in held:
        if cap.kind == kind and cap.policy.attach:
            theirs = _literal(cap.scope)
            if mine.startswith(theirs) or theirs.startswith(mine):
                labels = labels | cap.policy.attach
    return labels
