"""The capability table remembers what a scope answered for a resource (`table._covers`):
the same answers as `covers`, a deny rule's included, however warm; a str subclass whose hash
and `==` lie about what it is never finds another resource's answer; the memory is bounded."""

from __future__ import annotations

import pytest

from broker.caps import Capability, CapabilityTable, CapSpec
from broker.caps import table as table_module
from broker.errors import NotCapable


def table() -> CapabilityTable:
    caps = CapabilityTable(1)
    caps.add(Capability("fs", "/data/**", frozenset({"read"}), owner=1))
    caps.add(Capability("fs", "/data/secret/**", frozenset({"read"}), effect="deny", owner=1))
    caps.add(Capability("clock", "*", frozenset({"read"}), owner=1))
    return caps


class Liar(str):
    """A resource that claims to be `/data/a.txt` to a hash and to that one comparison,
    whatever it holds (what a scope looks at, its prefix, it does not lie about)."""

    def __hash__(self) -> int:
        return hash("/data/a.txt")

    def __eq__(self, other: object) -> bool:
        return other == "/data/a.txt" or str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other


def test_warm_answers_are_the_scopes_own() -> None:
    caps = table()
    for _ in range(3):  # cold, then remembered
        assert caps.decide("fs", "read", "/data/a.txt", now=0.0).scope == "/data/**"
        with pytest.raises(NotCapable, match="denied by a rule"):
            caps.decide("fs", "read", "/data/secret/k", now=0.0)
        with pytest.raises(NotCapable, match="no capability"):
            caps.decide("fs", "read", "/database", now=0.0)
        with pytest.raises(NotCapable, match="no capability"):
            caps.decide("fs", "write", "/data/a.txt", now=0.0)
        assert caps.decide("clock", "read", "wall", now=0.0).kind == "clock"
        manifest = ((CapSpec("fs", "/data/pub/**", frozenset({"read"})),),)
        with pytest.raises(NotCapable, match="outside the tool's manifest"):
            caps.decide("fs", "read", "/data/a.txt", now=0.0, manifests=manifest)
        assert caps.decide("fs", "read", "/data/pub/b", now=0.0, manifests=manifest)


def test_a_lying_str_subclass_never_gets_another_resources_answer() -> None:
    caps = CapabilityTable(1)
    caps.add(Capability("fs", "/data/**", frozenset({"read"}), owner=1))
    caps.decide("fs", "read", "/data/a.txt", now=0.0)  # its answer is remembered
    with pytest.raises(NotCapable, match="no capability"):
        caps.decide("fs", "read", Liar("/etc/passwd"), now=0.0)
    manifest = ((CapSpec("fs", "/data/**", frozenset({"read"})),),)
    with pytest.raises(NotCapable, match="outside the tool's manifest"):
        caps.decide("fs", "read", Liar("/etc/passwd"), now=0.0, manifests=manifest)
    # the neighbour, by its own name, is still allowed
    assert caps.decide("fs", "read", "/data/a.txt", now=0.0).scope == "/data/**"


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "COVERED_MAX_ENTRIES", 8)
    caps = table()
    for i in range(50):
        caps.decide("fs", "read", f"/data/{i}", now=0.0)
        assert len(table_module._covered) <= 8
    long = "/data/" + "x" * table_module.COVERED_MAX_RESOURCE
    table_module._covered.clear()
    assert caps.decide("fs", "read", long, now=0.0).scope == "/data/**"
    assert table_module._covered == {}  # (a long resource is answered, not remembered)
