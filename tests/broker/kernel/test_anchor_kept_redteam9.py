"""Red team 9 on lane anchorkept (`broker.store.remembered`): the anchor a single writer
remembers stands for a lock file that is missing or older, but a lock file whose signed slot
claims a seq at least as new was taken as it was, whatever it held. The attacker (writing the
SQLite file and the files beside it, holding no key) puts back an older copy of the lock file
(its head genuinely MACed) with, in the signed slot, an anchor of the chain's head that does
not verify, or that verifies under a key of its own. The open then trusted nothing but the
old head: every record after it, genuine ones too, was unvouched, and an end there counted
for nothing, so a process the host ended, its row set runnable again, was served (HIGH: red
team 7's older-lock-file attack, which anchorkept closed, back with one line written in the
lock file). The remembered anchor must give way only to a newer one that verifies and lies
on the chain.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import Conflict, Kernel
from broker.store import anchor, signing
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_ends_vouch_redteam7 import revive, spawned
from tests.broker.kernel.test_process_revived_redteam import _revived_notes
from tests.conftest import anchor_problems

fs_root = links.fs_root


def _forged_anchor(db: Path, how: str) -> anchor.Signed:
    """An anchor of the chain's head as it is, signed by no key of the broker's."""
    with sqlite3.connect(db) as con:
        seq, digest = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                                  ).fetchone()
    con.close()
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw().hex()
    signature = (key.sign(signing.anchor_message(seq, digest)).hex() if how == "own key"
                 else "ab" * 64)
    return anchor.Signed(seq, digest, public, signature)


@pytest.mark.parametrize("how", ["own key", "garbage"])
async def test_an_older_lock_file_with_a_forged_newer_anchor_revives_no_ended_process(
        db_path: Path, fs_root: Path, how: str) -> None:
    lock = Path(f"{db_path}.lock")
    pid, neighbour = await spawned(db_path, fs_root)
    older = lock.read_bytes()
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        kernel.exit(pid, 3, "done")  # (genuine, past the older lock file's head)
        later = kernel.spawn("agent", caps=[PUB])
    lock.write_bytes(older)
    with open(lock, "r+b") as f:
        anchor.write_signed(f.fileno(), _forged_anchor(db_path, how))
    revive(db_path, pid)
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1
        assert any("remembered" in p for p in anchor_problems(kernel)), anchor_problems(kernel)
        for other in (neighbour, later):  # (genuine grants, vouched by the memory)
            assert await kernel.call_tool(other, "read_file", {"path": "/data/pub/f"}) == "pub"
