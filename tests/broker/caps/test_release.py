"""The registry lets go of ended processes (`CapabilityRegistry.release`, called as they leave
the kernel's memory): their capabilities go, but those something still derives from, which a
revocation must still reach through, and those go once nothing below them is left. Real
registry, real capabilities; the kernel side is in tests/broker/kernel/test_reaping.py."""

from __future__ import annotations

import gc

from broker.caps import CapabilityRegistry, CapSpec
from broker.caps.capability import Capability
from broker.caps.table import CapabilityTable

RW = CapSpec("fs", "/w", frozenset({"read", "write"}))
R = CapSpec("fs", "/w", frozenset({"read"}))


def lineage() -> tuple[CapabilityRegistry, Capability, Capability, Capability]:
    """Process 1 holds /w; 2 a narrowing of it; 3 a narrowing of 2's."""
    registry = CapabilityRegistry()
    _, top = registry.grant(1, RW)
    _, middle = registry.derive(1, 2, RW)
    _, bottom = registry.derive(2, 3, R)
    return registry, top, middle, bottom


def test_a_released_capability_something_derives_from_stays_for_revocation() -> None:
    registry, _, middle, bottom = lineage()
    registry.release([2])
    assert registry.get(middle.id) == middle  # 3's derives from it
    assert [c.id for c in registry.revoke(middle.id)] == [middle.id, bottom.id]
    registry.prune()
    assert registry.owners() == [1, 3] and len(registry.table(3)) == 0


def test_released_capabilities_go_up_the_lineage_once_nothing_derives_from_them() -> None:
    registry, top, _, _ = lineage()
    registry.release([2])
    registry.release([3])  # the last one below 2's: both go
    assert registry.owners() == [1]
    assert not registry.derives_from(top.id)  # (no empty set left behind either)
    assert registry._children == {}
    assert [c.id for c in registry.revoke(top.id)] == [top.id]


def test_a_revocation_below_lets_a_released_one_go_at_the_next_prune() -> None:
    registry, _, _, bottom = lineage()
    registry.release([2])
    registry.revoke(bottom.id)
    registry.prune()
    assert registry.owners() == [1, 3]
    registry.release([3])
    assert registry.owners() == [1]


def test_held_again_puts_back_what_the_store_holds_and_keeps_what_stayed() -> None:
    registry, top, middle, _ = lineage()
    stored = list(registry.table(2))
    registry.release([2, 3])
    assert registry.owners() == [1]
    table = registry.held_again(2, stored)
    assert table.caps() == [middle] and registry.derives_from(top.id)
    registry.release([2])  # and goes again
    assert registry.owners() == [1]


def test_a_thousand_released_processes_leave_nothing_behind() -> None:
    registry = CapabilityRegistry()
    registry.grant(1, RW)
    gc.collect()
    before = sum(isinstance(o, (Capability, CapabilityTable)) for o in gc.get_objects())
    for pid in range(2, 1002):
        registry.derive(1, pid, R)
        registry.grant(pid, CapSpec("obj", f"proc/{pid}", frozenset({"read"})))
        registry.release([pid])
    gc.collect()
    assert registry.owners() == [1] and registry._children == {}
    after = sum(isinstance(o, (Capability, CapabilityTable)) for o in gc.get_objects())
    assert after - before < 10  # (3,000 without release)
