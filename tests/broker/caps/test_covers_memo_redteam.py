"""Red team on the memo of scope answers (`table._covers`): it remembers only what a scope's
text says of a resource's text, so nothing about who holds what. A capability dropped or
narrowed after its answer was remembered allows nothing more; a deny rule with the same text
as a remembered allow still wins; another process's table, or another kind, finds no answer
of its own in the memo."""

from __future__ import annotations

import dataclasses

import pytest

from broker.caps import Capability, CapabilityTable
from broker.errors import NotCapable


def warm(caps: CapabilityTable, resource: str = "/data/a.txt") -> None:
    for _ in range(2):
        assert caps.decide("fs", "read", resource, now=0.0).scope == "/data/**"


def test_a_dropped_capability_allows_nothing_after_its_answer_was_remembered() -> None:
    caps = CapabilityTable(1)
    cap = Capability("fs", "/data/**", frozenset({"read"}), owner=1)
    caps.add(cap)
    warm(caps)
    caps.drop(cap.id)
    with pytest.raises(NotCapable, match="no capability"):
        caps.decide("fs", "read", "/data/a.txt", now=0.0)


def test_a_narrowed_capability_allows_only_its_new_scope() -> None:
    caps = CapabilityTable(1)
    cap = Capability("fs", "/data/**", frozenset({"read"}), owner=1)
    caps.add(cap)
    warm(caps)
    caps.replace(dataclasses.replace(cap, scope="/data/pub/**"))
    with pytest.raises(NotCapable, match="no capability"):
        caps.decide("fs", "read", "/data/a.txt", now=0.0)
    assert caps.decide("fs", "read", "/data/pub/b", now=0.0).scope == "/data/pub/**"


def test_a_deny_rule_with_the_remembered_allows_text_still_wins() -> None:
    caps = CapabilityTable(1)
    caps.add(Capability("fs", "/data/**", frozenset({"read"}), owner=1))
    warm(caps)
    caps.add(Capability("fs", "/data/**", frozenset({"read"}), effect="deny", owner=1))
    with pytest.raises(NotCapable, match="denied by a rule"):
        caps.decide("fs", "read", "/data/a.txt", now=0.0)


def test_another_table_or_kind_finds_no_remembered_allow() -> None:
    holder = CapabilityTable(1)
    holder.add(Capability("fs", "/data/**", frozenset({"read"}), owner=1))
    warm(holder)
    other = CapabilityTable(2)
    other.add(Capability("obj", "/data/**", frozenset({"read"}), owner=2))
    with pytest.raises(NotCapable, match="no capability"):
        other.decide("fs", "read", "/data/a.txt", now=0.0)
    with pytest.raises(NotCapable, match="no capability"):
        holder.decide("fs", "write", "/data/a.txt", now=0.0)  # (the right is not remembered)
    warm(holder)  # the holder's own answer is unchanged
