"""Red team: a database write between an image's store and the record that vouches for it.
A process registers (`image.register`) or commits (`image.commit`) an image; right after the
store wrote its row, before the syscall's outcome record, a writer widens the row (its deny
rule dropped, its needs widened). The outcome used to carry the digest of the row read back,
so it vouched for the edit; it now carries the digest of what the kernel built, and the row
is refused when loaded (`Tampered`, an `audit.anchor` record naming it). An image the same
process registers without the writer still spawns. Both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.store.vouch import SPEC_HASH, Tampered
from tests.conftest import open_image

MAKER = ("fs:/data/**:read", "image:*:register")
DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
EDITED = "is stored otherwise than it was registered"


def _write_in_the_gap(kernel: Kernel, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """After the real store stores image `name`, it rewrites its row (once): deny rules
    dropped, needs widened, written through the same store."""
    store = kernel.store
    real = store.add_image_version

    def storing(image: str, spec: dict[str, Any]) -> str:
        version = real(image, spec)
        if image == name:
            monkeypatch.setattr(store, "add_image_version", real)
            edited = {**spec, "version": version, "denies": [], "needs": ["fs:/**:read"]}
            with store.transaction() as db:
                db.execute("UPDATE images SET spec=? WHERE name=? AND version=?",
                           (json.dumps(edited), image, version))
        return version

    monkeypatch.setattr(store, "add_image_version", storing)


async def _make(kernel: Kernel, pid: int, how: str, name: str) -> dict[str, Any]:
    if how == "register":
        return dict(await kernel.call_tool(pid, "register_image", {"image": {
            "name": name, "tools": ["read_file"], "needs": ["fs:/data/pub/**:read"]}}))
    return dict(await kernel.call_tool(pid, "commit_image", {"name": name}))


@pytest.mark.parametrize("how", ["register", "commit"])
async def test_a_row_written_before_its_record_is_refused_at_load(
        store_at: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "maker", needs=MAKER, denies=(DENY,),
                         tools=("read_file", "register_image", "commit_image"))
        pid = kernel.spawn("maker", caps=list(MAKER))
        _write_in_the_gap(kernel, monkeypatch, "raced")
        made = await _make(kernel, pid, how, "raced")
        assert made["name"] == "raced" and SPEC_HASH not in made  # the process sees no hash
        assert kernel.store.get_image("raced")[1]["needs"] == ["fs:/**:read"]  # edited

        with pytest.raises(Tampered, match=f"image raced:1 refused: .*{EDITED}"):
            kernel.spawn("raced", caps=["fs:/data/pub/**:read"])
        noted = [r["detail"]["problem"] for r in kernel.audit()
                 if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]
        assert len(noted) == 1 and "image raced:1" in noted[0] and EDITED in noted[0]
        problems = kernel.verify_audit()[1]  # `libos audit --verify` names it too
        assert problems and all(f"image raced:1 {EDITED}" in p for p in problems), problems

        # The neighbour: the same act without the writer, loaded and spawned.
        await _make(kernel, pid, how, "genuine")
        child = kernel.spawn("genuine", caps=["fs:/data/pub/**:read"])
        assert kernel.store.get_process(child)["state"] == "runnable"
