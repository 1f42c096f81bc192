"""Red team: a row planted as a newer version of a genuine image (no record registered it, its
deny rule dropped) used to make every spawn by the image's name alone fail `Tampered`: a
denial of service by anyone who writes the database. By name alone the kernel now takes the
version the chain registered last (the planted row recorded, once, in an `audit.anchor`
record, and named by `libos audit --verify`); naming the planted version still raises
`Tampered`. Both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, Kernel
from broker.store.opening import open_store
from broker.store.vouch import Tampered
from tests.conftest import open_image

DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
CAPS = ["fs:/data/**:read"]
PARENT = ("fs:/data/**:read", "proc:*:spawn,exec")
PLANTED = "image target:2 is stored as registered, but no record in the audit registered " \
          "it: planted"


def _plant(store: Path | str) -> None:
    """Version 2 of `target`, its deny rule dropped, stored after the genuine version 1."""
    s = open_store(store)
    try:
        with s.transaction() as db:
            [(spec,)] = db.execute("SELECT spec FROM images WHERE name='target'").fetchall()
            spec = {**json.loads(spec), "denies": [], "version": "2"}
            db.execute("INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
                       ("target", "2", json.dumps(spec), 4.0e9))
    finally:
        s.close()


def _image_of(kernel: Kernel, pid: int) -> str:
    info = kernel.process_info(pid)
    return f"{info['image']}:{info['version']}"


def _anchors(kernel: Kernel) -> list[Any]:
    return [r["detail"]["problem"] for r in kernel.audit()
            if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]


async def test_a_planted_newer_version_does_not_deny_the_genuine_one(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "target", needs=CAPS, tools=("read_file",), denies=(DENY,))
        await open_image(kernel, "parent", needs=PARENT, tools=("spawn", "exec"))
        running = kernel.spawn("target", caps=CAPS)
        parent = kernel.spawn("parent", caps=list(PARENT))
    _plant(store_at)

    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        assert kernel.store.get_process(running)["state"] == "runnable"  # on version 1
        # By name alone: the genuine version, its deny rule kept.
        assert kernel.image("target").version == "1" and kernel.image("target").denies
        pid = kernel.spawn("target", caps=CAPS)
        assert _image_of(kernel, pid) == "target:1"
        child = await kernel.call_tool(parent, "spawn", {"image": "target", "caps": CAPS})
        assert _image_of(kernel, child) == "target:1"

        # Naming the planted version: refused.
        with pytest.raises(Tampered, match=PLANTED):
            kernel.image("target", "2")
        with pytest.raises(Conflict, match=PLANTED):
            await kernel.call_tool(parent, "exec", {"image": "target", "version": "2"})
        assert _anchors(kernel) == [PLANTED]  # recorded once, however often it was met
        assert PLANTED in kernel.verify_audit()[1]

        done = await kernel.call_tool(parent, "exec", {"image": "target"})
        assert done["to"] == "target:1"
