"""Label policies: parsing hostile input, the verdict of a bound, narrowing (a child never
drops a source's labels nor loosens a bound), the intersection, the wire and the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.caps import Capability, CapSpec
from broker.caps.labels import LabelPolicy, LabelRule, parse_labels
from broker.caps.narrowing import intersect
from broker.errors import InvalidArgument
from broker.store import SQLiteStore

EXPORT = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
          "flows": {"secret": "deny", "untrusted": "ask"}}


@pytest.mark.parametrize("bad", [
    "secret", ["Secret"], ["public"], ["a b"], [1], ["x" * 65], [f"l{i}" for i in range(33)],
    ["secret\x00"], {"secret": 1}.values(), [{"a": 1}], [["secret"]],
    {"secret": 1}])
def test_label_names_are_checked(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_labels(bad)
    assert parse_labels(None) == frozenset() and parse_labels(["a", "a"]) == {"a"}


@pytest.mark.parametrize("flows", [["secret"], {"secret": "allow"}, {"secret": "maybe"},
                                   {"Bad": "deny"}, {"secret": ["deny"]}])
def test_flow_bounds_are_checked(flows: object) -> None:
    with pytest.raises(InvalidArgument):
        CapSpec.parse({**EXPORT, "flows": flows})
    with pytest.raises(InvalidArgument):
        CapSpec.parse({**EXPORT, "labels": "secret"})


def test_the_verdict_names_the_labels_that_decided_it() -> None:
    policy = CapSpec.parse(EXPORT).policy
    assert policy.verdict(frozenset()) == ("allow", frozenset())
    assert policy.verdict(frozenset({"pii"})) == ("allow", frozenset())
    assert policy.verdict(frozenset({"untrusted", "pii"})) == ("ask", {"untrusted"})
    assert policy.verdict(frozenset({"untrusted", "secret"})) == ("deny", {"secret"})
    only_public = LabelPolicy.parse(flows={"*": "deny", "untrusted": "ask"})
    assert only_public.verdict(frozenset({"untrusted"})) == ("deny", {"untrusted"})
    assert only_public.verdict(frozenset()) == ("allow", frozenset())


def test_a_narrowing_keeps_sources_and_bounds() -> None:
    parent = CapSpec.parse({**EXPORT, "labels": ["secret"]})
    same = CapSpec.parse({**EXPORT, "labels": ["secret", "pii"]})
    stricter = CapSpec.parse({**EXPORT, "labels": ["secret"],
                              "flows": {"secret": "deny", "untrusted": "deny"}})
    assert same.within(parent) and stricter.within(parent)
    for widened in ({**EXPORT},  # drops the attached label
                    {**EXPORT, "labels": ["secret"], "flows": {"secret": "deny"}},
                    {**EXPORT, "labels": ["secret"], "flows": {"secret": "ask",
                                                               "untrusted": "ask"}}):
        assert not CapSpec.parse(widened).within(parent), widened
    everything = CapSpec.parse({"kind": "net", "scope": "*", "rights": ["fetch"],
                                "flows": {"*": "deny"}})
    assert not CapSpec.parse({"kind": "net", "scope": "*", "rights": ["fetch"],
                              "flows": {"secret": "deny"}}).within(everything)
    # A person's answer lifts an `ask` bound, never a `deny`.
    answered = parent.policy.answered(frozenset({"secret", "untrusted"}))
    assert answered.effect_for("secret") == "deny" and answered.effect_for("untrusted") == "allow"
    assert CapSpec("fs", "/exports/a", frozenset({"write"}), policy=answered).within(
        parent, answered=True)
    assert not CapSpec("fs", "/exports/a", frozenset({"write"}), policy=answered).within(parent)


def test_the_intersection_keeps_both_policies() -> None:
    held = CapSpec.parse({**EXPORT, "labels": ["a"]})
    bound = CapSpec.parse({"kind": "fs", "scope": "/exports/**", "rights": ["write"],
                           "labels": ["b"], "flows": {"untrusted": "deny"}})
    meet = intersect(held, bound)
    assert meet is not None
    assert meet.policy.attach == {"a", "b"}
    assert dict(meet.policy.flows) == {"secret": "deny", "untrusted": "deny"}


def test_policies_round_trip_the_wire_and_the_store(tmp_path: Path) -> None:
    spec = CapSpec.parse({**EXPORT, "labels": ["secret"]})
    assert CapSpec.parse(spec.to_wire()) == spec
    assert "labels" not in CapSpec.parse("fs:/a/**:read").to_wire()
    store = SQLiteStore(tmp_path / "s.db")
    try:
        cap = Capability(kind=spec.kind, scope=spec.scope, rights=spec.rights,
                         policy=spec.policy, owner=1)
        store.insert_capabilities([("h_1", cap)])
        [(_, loaded)] = store.load_capabilities()
        assert loaded.policy == spec.policy and loaded.to_wire() == cap.to_wire()
    finally:
        store.close()


def test_label_rules_are_checked() -> None:
    assert LabelRule.parse({"kind": "net", "scope": "*", "labels": ["untrusted"]}).labels == {
        "untrusted"}
    for bad in ({"kind": "net", "labels": []}, {"kind": "net", "labels": ["x"], "extra": 1},
                {"scope": "*", "labels": ["x"]}, "net:*", {"kind": "net", "scope": "",
                                                          "labels": ["x"]},
                {"kind": "net", "labels": [{"x": 1}]}):
        with pytest.raises(InvalidArgument):
            LabelRule.parse(bad)


def test_an_answer_lifts_the_ask_of_the_labels_it_was_shown_only() -> None:
    asks = CapSpec.parse({"kind": "fs", "scope": "/exports/**", "rights": ["write"],
                          "flows": {"*": "ask", "pii": "deny"}})
    answered = asks.policy.answered(frozenset({"untrusted"}))
    assert answered.verdict(frozenset({"untrusted"})) == ("allow", frozenset())
    assert answered.verdict(frozenset({"untrusted", "secret"})) == ("ask", {"secret"})
    assert answered.verdict(frozenset({"pii"}))[0] == "deny"
    grant = CapSpec("fs", "/exports/a", frozenset({"write"}), policy=answered)
    assert grant.within(asks, answered=True) and not grant.within(asks)
    # Round-trips through the store's form, and a child cannot ask for a lift itself.
    assert CapSpec.parse(grant.to_wire()).policy == answered
    child = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
             "flows": {"*": "ask", "pii": "deny"}, "lifted": ["secret"]}
    assert not CapSpec.parse(child).within(asks)
