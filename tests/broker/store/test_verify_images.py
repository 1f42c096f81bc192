"""`libos audit --verify` names a stored image (an `images` row) edited behind the chain's
back: one the host registered (`host.image` carries its spec's digest), one a process
registered (`image.register`) and one it committed (`image.commit`, each outcome carrying
`spec_hash`), and one planted (no record registered it). The untouched images verify.
(Loading one refuses it too: tests/broker/kernel/test_image_rows_vouched_redteam.py.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main

NEEDS = ("fs:/data/**:read", "image:*:register")
DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}


async def _images(db_path: Path) -> dict[str, int]:
    """Three images of each origin, and the seq of the record that vouches for each."""
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage.from_json({
            "name": "hosted", "tools": ["read_file", "register_image", "commit_image"],
            "needs": list(NEEDS), "denies": [DENY]}))
        pid = kernel.spawn("hosted", caps=["fs:/data/**:read", "image:*:register"])
        await kernel.call_tool(pid, "register_image", {"image": {
            "name": "made", "tools": ["read_file"], "needs": ["fs:/data/pub/**:read"]}})
        await kernel.call_tool(pid, "commit_image", {"name": "kept"})
        seqs = {r["resource"].split(":")[0]: r["seq"] for r in kernel.audit()
                if r["syscall"] == "host.image"}
        seqs |= {r["detail"]["result"]["name"]: r["seq"] for r in kernel.audit(pid)
                 if r["syscall"] in ("image.register", "image.commit")
                 and r["phase"] == "outcome"}
        assert kernel.verify_audit()[1] == []
    return seqs


def _edit(db_path: Path, name: str, change: Any) -> None:
    with sqlite3.connect(db_path) as db:
        [(spec,)] = db.execute("SELECT spec FROM images WHERE name=?", (name,)).fetchall()
        spec = json.loads(spec)
        change(spec)
        db.execute("UPDATE images SET spec=? WHERE name=?", (json.dumps(spec), name))


EDITS = {
    "hosted": lambda s: s.update(denies=[]),  # its deny rule dropped
    "made": lambda s: s.update(needs=["fs:/**:read,write"]),  # its needs widened
    "kept": lambda s: s["tools"].append("write_file"),
}


@pytest.mark.parametrize("name", EDITS)
async def test_verify_names_an_edited_image(db_path: Path, name: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    seqs = await _images(db_path)
    _edit(db_path, name, EDITS[name])
    assert_named_edited(db_path, capsys, seqs[name], f"{name}:1")


def assert_named_edited(db_path: Path, capsys: pytest.CaptureFixture[str], seq: int,
                        image: str) -> None:
    """`libos audit --verify` exits 1 naming `image` (name:version), registered at `seq`,
    as edited, and nothing else."""
    assert cli_main(["audit", "--verify", "--json", "--db", str(db_path)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert problems == [f"record {seq}: image {image} is stored otherwise than it was "
                        "registered (its tools, manifests, needs, denies or planner differ): "
                        "edited"], problems


async def test_untouched_and_reformatted_images_verify(db_path: Path) -> None:
    await _images(db_path)
    _edit(db_path, "made", lambda s: None)  # the same content, written out otherwise
    assert cli_main(["audit", "--verify", "--db", str(db_path)]) == 0


async def test_verify_names_a_planted_image(db_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A row no record registered (here a newer version of a genuine image) is planted."""
    await _images(db_path)
    with sqlite3.connect(db_path) as db:
        [(spec,)] = db.execute("SELECT spec FROM images WHERE name='hosted'").fetchall()
        spec = {**json.loads(spec), "denies": [], "version": "2"}
        db.execute("INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
                   ("hosted", "2", json.dumps(spec), 4.0e9))
    assert cli_main(["audit", "--verify", "--json", "--db", str(db_path)]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == [
        "image hosted:2 is stored as registered, but no record in the audit registered it: "
        "planted"]
