"""Red team: an image registration the store refused vouches for nothing. The host registers
an image, then registers the same name and version again without its deny rule: refused
(`Conflict`: registered differently). Its `host.image` record was written before the store
refused it, carrying the digest of the refused spec, which `ImageDigests` then vouched for: a
later edit of the stored row to that spec (its deny rule dropped) passed `libos audit
--verify`. It is now refused before its record, and the edit is named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Conflict, InvalidArgument, Kernel
from broker.cli import main as cli_main
from tests.broker.store.test_verify_images import assert_named_edited

DENY = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}
IMAGE = {"name": "hosted", "tools": ["read_file"], "needs": ["fs:/data/**:read"]}


async def _refused_then_kept(db_path: Path) -> int:
    """The image registered, then refused as registered differently: the seq of the record
    that registered it."""
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage.from_json({**IMAGE, "denies": [DENY]}))
        with pytest.raises(Conflict):
            await kernel.register_image(AgentImage.from_json(IMAGE))  # its deny rule dropped
        # An image refused by its checks right after: its refusal says nothing of the kept.
        with pytest.raises(InvalidArgument):
            await kernel.register_image(AgentImage.from_json({**IMAGE, "tools": ["nope"]}))
        first, *rest = [r for r in kernel.audit() if r["syscall"] == "host.image"]
        assert first["phase"] == "admin"  # refused before their records: none vouches
        assert [(r["phase"], r["detail"]["error"]) for r in rest] == [
            ("rejected", "CONFLICT"), ("rejected", "INVALID_ARGUMENT")]
        assert kernel.verify_audit()[1] == []
        assert kernel.image("hosted").denies  # as first registered
    return int(first["seq"])


def _drop_denies(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        [(spec,)] = db.execute("SELECT spec FROM images WHERE name='hosted'").fetchall()
        spec = json.loads(spec)
        del spec["denies"]  # as the refused spec has it (none)
        db.execute("UPDATE images SET spec=? WHERE name='hosted'", (json.dumps(spec),))


async def test_a_refused_registration_does_not_vouch_for_its_spec(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq = await _refused_then_kept(db_path)
    _drop_denies(db_path)
    assert_named_edited(db_path, capsys, seq, "hosted:1")


async def test_the_kept_registration_still_verifies(db_path: Path) -> None:
    await _refused_then_kept(db_path)
    assert cli_main(["audit", "--verify", "--db", str(db_path)]) == 0
