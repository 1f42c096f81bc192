"""Properties of capabilities under hostile input (issue 14, item 8), for Hypothesis: a forged
spec is a clean `InvalidArgument` or a spec that round-trips; a narrowing never covers more
than what it narrows; and a child derived from a parent, carrying its deny rules, is never
allowed what the parent is not. `bench/fuzz_bench.py` runs these with 100k and 1M examples."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.caps import CapabilityRegistry, CapSpec, NeedsApproval, host_scope
from broker.caps.capability import EFFECTS, RIGHTS
from broker.errors import InvalidArgument, NotCapable

KINDS = ("fs", "obj", "tool")  # shell scopes have their own (tests/broker/caps/test_shell_scope)
_KINDS = st.sampled_from(KINDS)
NOW = 1000.0

# Pieces an attacker builds scopes and resources from: the pattern characters, dots, empty
# components, look-alikes and the separators of the short form.
SEGMENTS = ("a", "b", "ab", "*", "**", ".", "..", "a*", "", " ", "A", "\u00e9", "e\u0301",
            "\u202e", ":", ",", "\x00", "team", "team.x", "%2e")


# Strategies are built once (building one per draw would cost more than the checks).
_SEGMENTS = st.sampled_from(SEGMENTS)
_FS_TAILS = st.sampled_from(["", "/**", "*", "/*"])
_TAILS = st.sampled_from(["", "*", ".*"])
_RIGHTS = {kind: st.sampled_from(sorted(rights)) for kind, rights in RIGHTS.items()}
_USES = st.none() | st.integers(1, 5)
_EXPIRES = st.none() | st.floats(NOW - 10, NOW + 10)


@st.composite
def _scopes(draw: st.DrawFn, kind: str) -> str:
    parts = draw(st.lists(_SEGMENTS, max_size=4))
    if kind == "fs":
        scope = "/" + "/".join(parts)
        tail = draw(_FS_TAILS)
        return "/**" if scope == "/" and tail == "/**" else scope + tail
    return "".join(parts) + draw(_TAILS) or "*"


@st.composite
def _resources(draw: st.DrawFn, kind: str) -> str:
    parts = draw(st.lists(_SEGMENTS, max_size=5))
    return "/" + "/".join(parts) if kind == "fs" else "".join(parts)


@st.composite
def _specs(draw: st.DrawFn, kind: str, effects: tuple[str, ...]) -> CapSpec:
    rights = draw(st.sets(_RIGHTS[kind], min_size=1))
    try:
        return CapSpec(kind, draw(SCOPES[kind]), frozenset(rights),
                       effect=draw(st.sampled_from(effects)),  # type: ignore[arg-type]
                       uses=draw(_USES), expires=draw(_EXPIRES))
    except InvalidArgument:
        return CapSpec(kind, "/**" if kind == "fs" else "*", frozenset(rights))


SCOPES = {kind: _scopes(kind) for kind in KINDS}
PROBES = {kind: st.lists(st.tuples(_RIGHTS[kind], _resources(kind)), min_size=1, max_size=8)
          for kind in KINDS}
SPECS = {kind: _specs(kind, EFFECTS) for kind in KINDS}
GRANTS = {kind: _specs(kind, ("allow", "ask")) for kind in KINDS}  # what a child asks for
DENIES = {kind: _specs(kind, ("deny",)) for kind in KINDS}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
FIELDS = ("kind", "scope", "rights", "effect", "uses", "expires")
forged = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from([*FIELDS, "id", "owner", "parent", "args_hash", "Kind"]),
                    json_values | st.sampled_from([*RIGHTS, *EFFECTS, "/**", "*", ["read"],
                                                   ["read", "write", "root"], 0, -1, 1e309]),
                    max_size=7),
    st.builds(lambda k, s, r: f"{k}:{s}:{r}",
              st.sampled_from([*RIGHTS, "", "FS", "fs ", "root", "*"]),
              st.text(st.sampled_from("/*.:,a\x00\u202e "), max_size=12),
              st.text(st.sampled_from("readwritecallspawn,*: "), max_size=16)),
)


@given(forged)
def test_a_forged_spec_is_refused_cleanly_or_round_trips(value: Any) -> None:
    try:
        spec = CapSpec.parse(value)
    except InvalidArgument:
        return
    assert spec.rights
    if spec.kind in RIGHTS:
        assert spec.rights <= RIGHTS[spec.kind]
    else:  # a host tool's own kind: any lowercase name, with rights that are names too
        assert all(host_scope.NAME.fullmatch(name) for name in (spec.kind, *spec.rights))
    assert CapSpec.parse(spec.to_wire()) == spec


@st.composite
def scope_pairs(draw: st.DrawFn) -> tuple[CapSpec, CapSpec, list[tuple[str, str]]]:
    kind = draw(_KINDS)
    outer = draw(SPECS[kind])
    inner = draw(SPECS[kind])
    probes = draw(PROBES[kind])
    # A resource at each scope's own prefix too: where a widening would show first.
    probes += [(right, s.scope.rstrip("*").removesuffix("/") or "/")
               for s in (inner, outer) for right in sorted(s.rights)]
    return inner, outer, probes


@given(scope_pairs())
def test_a_narrowing_never_covers_more_than_what_it_narrows(
        case: tuple[CapSpec, CapSpec, list[tuple[str, str]]]) -> None:
    inner, outer, probes = case
    if not inner.within(outer):
        return
    assert outer.effect != "deny"
    for right, resource in probes:
        if inner.covers(inner.kind, right, resource):
            assert outer.covers(outer.kind, right, resource), (inner, outer, resource)


def _verdict(registry: CapabilityRegistry, pid: int, kind: str, right: str, resource: str
             ) -> str:
    try:
        registry.table(pid).decide(kind, right, resource, now=NOW)
    except NotCapable:
        return "no"
    except NeedsApproval:
        return "ask"
    return "allow"


@st.composite
def lineages(draw: st.DrawFn) -> tuple[str, list[CapSpec], list[CapSpec], list[tuple[str, str]]]:
    kind = draw(_KINDS)
    parent = draw(st.lists(SPECS[kind], min_size=1, max_size=4))
    parent.append(draw(DENIES[kind]))  # a rule the child must carry
    # What a child asks for: anything, or (as often) exactly a grant its parent holds, so
    # that derivations succeed and meet the parent's rules.
    held = [s for s in parent if s.effect != "deny"]
    asks = GRANTS[kind] | st.sampled_from(held) if held else GRANTS[kind]
    child = draw(st.lists(asks, min_size=1, max_size=4))
    probes = draw(PROBES[kind])
    probes += [(right, s.scope.rstrip("*").removesuffix("/") or "/")
               for s in parent + child for right in sorted(s.rights)]
    return kind, parent, child, probes


@given(lineages())
def test_a_derived_child_is_never_allowed_what_its_parent_is_not(
        case: tuple[str, list[CapSpec], list[CapSpec], list[tuple[str, str]]]) -> None:
    """The host grants the parent anything (deny rules included); the child asks for
    anything (a widening is `NotCapable`) and carries the parent's deny rules."""
    kind, parent, child, probes = case
    registry = CapabilityRegistry()
    for spec in parent:
        registry.grant(1, spec)
    for spec in child:
        with contextlib.suppress(NotCapable):
            registry.derive(1, 2, spec)
    registry.inherit_denies(1, 2)
    rank = {"no": 0, "ask": 1, "allow": 2}
    for right, resource in probes:
        theirs = _verdict(registry, 2, kind, right, resource)
        ours = _verdict(registry, 1, kind, right, resource)
        assert rank[theirs] <= rank[ours], (parent, child, right, resource, theirs, ours)
