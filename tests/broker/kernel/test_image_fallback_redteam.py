"""Red team: a load by an image's name alone falls back from a planted newer row to the
version the chain registered last (test_image_planted_redteam.py). That fallback, and the
store's own idea of "newest" (its `created` column, anyone's who writes the database), must
not be steerable to an older, wider version the chain registered and then superseded:

* the record of the newest version broken (any byte of it edited): no fallback, `Tampered`
  (it used to fall back to the older version, its deny rule gone);
* an older version registered again by the host (idempotent) is not the newest for it: a
  planted newer row then falls back to the genuine newest, not to the re-registered older;
* an older version's row made the store's newest (`created` raised), or the newest row
  deleted: the chain's newest is loaded, or `Tampered` when its row is gone;
* the newest version's record hidden (its syscall edited, or deleted): its row looks
  planted, and is refused, not passed over, in a chain whose links are broken.

Version 1 of `target` has no deny rule (wide); version 2 denies /data/secret (narrow).
Both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Conflict, Kernel
from broker.store.vouch import Tampered
from tests.broker.kernel.test_image_rows_vouched_redteam import _sql
from tests.conftest import open_image

DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
CAPS = ["fs:/data/**:read"]


async def _register_both(store: Path | str, tmp_path: Path, *, again: bool = False) -> None:
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "target", needs=tuple(CAPS), tools=("read_file",))
        await open_image(kernel, "target", needs=tuple(CAPS), tools=("read_file",),
                         denies=(DENY,), version="2")
        if again:  # the host registers its base image again, as at every start (idempotent)
            await open_image(kernel, "target", needs=tuple(CAPS), tools=("read_file",))
        assert kernel.image("target").version == "2"


def _plant_newer(store: Path | str) -> None:
    [(spec,)] = _sql(store, "SELECT spec FROM images WHERE name='target' AND version='1'")
    spec = {**json.loads(spec), "version": "3"}
    _sql(store, "INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
         ("target", "3", json.dumps(spec), 4.0e9))


async def test_a_broken_record_of_the_newest_version_does_not_fall_back(
        store_at: Path | str, tmp_path: Path) -> None:
    await _register_both(store_at, tmp_path)
    [(seq, detail)] = _sql(store_at, "SELECT seq, detail FROM audit WHERE syscall='host.image'"
                                     " AND resource='target:2'")
    _sql(store_at, "UPDATE audit SET detail=? WHERE seq=?",
         (json.dumps({**json.loads(detail), "note": "x"}), seq))

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        with pytest.raises(Tampered, match="target:2"):
            kernel.image("target")
        with pytest.raises(Conflict, match="target:2"):
            kernel.spawn("target", caps=CAPS)
        assert kernel.image("target", "1").version == "1"  # named: still the genuine one


async def test_an_older_version_registered_again_is_not_the_newest(
        store_at: Path | str, tmp_path: Path) -> None:
    await _register_both(store_at, tmp_path, again=True)
    _plant_newer(store_at)

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        image = kernel.image("target")
        assert (image.version, bool(image.denies)) == ("2", True)


async def test_an_older_version_made_the_stores_newest_is_not_taken(
        store_at: Path | str, tmp_path: Path) -> None:
    await _register_both(store_at, tmp_path)
    _sql(store_at, "UPDATE images SET created=? WHERE name='target' AND version='1'", (4.0e9,))

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        image = kernel.image("target")
        assert (image.version, bool(image.denies)) == ("2", True)
        pid = kernel.spawn("target", caps=CAPS)
        assert kernel.process_info(pid)["version"] == "2"


async def test_the_newest_row_deleted_is_refused(store_at: Path | str, tmp_path: Path) -> None:
    await _register_both(store_at, tmp_path)
    _sql(store_at, "DELETE FROM images WHERE name='target' AND version='2'")

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        with pytest.raises(Tampered, match="target:2"):
            kernel.image("target")
        problems = [r["detail"]["problem"] for r in kernel.audit()
                    if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]
        assert any("target:2" in p for p in problems)


@pytest.mark.parametrize("hide", [
    "UPDATE audit SET syscall='host.obj.put' WHERE seq=?",  # no longer an image's record
    "DELETE FROM audit WHERE seq=?",
], ids=["renamed", "deleted"])
async def test_the_newest_versions_record_hidden_does_not_fall_back(
        store_at: Path | str, tmp_path: Path, hide: str) -> None:
    """The newest version's record hidden from the image records loading reads (its syscall
    edited, or the record deleted: loading does not walk the chain's links) made its row
    look planted, and the load by name fell back to the older, wider version. A fallback
    now walks the chain's links first (once per kernel, then only what was added): a chain
    broken anywhere is no ground to take an older version, the newest row is refused."""
    await _register_both(store_at, tmp_path)
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "other", needs=tuple(CAPS), tools=("read_file",))
    [(seq,)] = _sql(store_at, "SELECT seq FROM audit WHERE syscall='host.image'"
                              " AND resource='target:2'")
    _sql(store_at, hide, (seq,))  # (a record inside the chain: a tail cut is the anchor's)

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        with pytest.raises(Tampered, match="target:2"):
            kernel.image("target")
        with pytest.raises(Conflict, match="target:2"):
            kernel.spawn("target", caps=CAPS)
