"""The proof `check_path` mints (without `CheckedPath.__new__`'s call, for speed) is the very
proof that constructor makes: same type, same fields, same field types, immutable, and the
provider takes it; a resolved path's parts handed over as a tuple subclass are still made a
plain tuple."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.caps import Capability, CapabilityTable, CheckedPath, FileId, VirtualPath, normalize
from broker.caps.proof import _MINT
from broker.providers.fs import LocalFs


class Parts(tuple):  # type: ignore[type-arg]
    """A provider's parts that are a tuple, but not a plain one."""


def table() -> CapabilityTable:
    caps = CapabilityTable(1)
    caps.add(Capability("clock", "*", frozenset({"read"}), owner=1))
    caps.add(Capability("fs", "/data/**", frozenset({"read", "link"}), owner=1))
    return caps


@pytest.mark.parametrize("found", [None, FileId(5, 7, 1), FileId(5, 7, 2)])
def test_the_minted_proof_is_the_constructors(found: FileId | None) -> None:
    caps, named = table(), normalize("/data/x/")
    resolved = VirtualPath(Parts(("data", "y")), True)
    decision = caps.check_path("read", named, root=(), locate=lambda path: (resolved, found),
                               identify=lambda path: None, now=0.0)
    cap = next(c for _, c in caps if c.kind == "fs")
    expected = CheckedPath(_MINT, "read", "/data/y", cap.id, ("data", "y"), True,
                           None if found is None else found.key,
                           found is not None and found.names > 1, cap.scope)
    proof = decision.proof
    assert type(proof) is CheckedPath and proof == expected
    assert [type(field) for field in proof] == [type(field) for field in expected]
    assert type(proof.parts) is tuple and proof.identity == (None if found is None else (5, 7))
    with pytest.raises(AttributeError):
        proof.parts = ("etc",)  # type: ignore[misc]


def test_the_provider_reads_through_the_minted_proof(tmp_path: Path) -> None:
    fs = LocalFs(tmp_path / "root")
    (tmp_path / "root" / "data").mkdir()
    (tmp_path / "root" / "data" / "f.txt").write_text("hello")
    proof = table().check_path("read", normalize("/data/f.txt"), root=(), locate=fs.locate,
                               identify=fs.identify, now=0.0).proof
    assert fs.read(proof, 0, None) == b"hello"  # type: ignore[arg-type]
