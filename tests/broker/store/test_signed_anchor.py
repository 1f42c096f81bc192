"""The signed anchor (issue 14, item 6): whoever can write the database and its lock file, but
not the key, cannot rewrite the audit undetected; a third party verifies with the public key
alone; the key is made on first use, owner-only, given by path or environment, and rotates."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from broker import Kernel
from broker.cli import main as cli
from broker.errors import InvalidArgument
from broker.kernel.anchoring import SIGN_INTERVAL
from broker.store import AuditRecord, SQLiteStore, anchor, keys, signing
from broker.store.audit import GENESIS, KEY_RECORD, record_hash
from broker.store.keys import KEY_ENV, AuditKey
from tests.conftest import open_image

ROOT = Path(__file__).resolve().parents[3]


async def _history(db: Path, key: Path | None = None, calls: int = 5) -> int:
    async with Kernel.open(db, audit_key=key) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read"])
        for _ in range(calls):
            await kernel.call_tool(pid, "now", {})
        return kernel.store.head_seq


def _problems(db: Path, public: str | None = None) -> list[str]:
    store = SQLiteStore(db, writer=False)
    try:
        return store.audit_problems(public_key=public)[1]
    finally:
        store.close()


def _forge(db: Path, seq: int = 3) -> tuple[int, str]:
    """A forger with the database rewrites one record's detail and recomputes every hash
    after it: a self-consistent chain. Returns the new head."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, ts, pid, inv, tool, phase, syscall, resource, args_hash,"
                           " cap_id, detail FROM audit ORDER BY seq").fetchall()
        prev = GENESIS
        for row_seq, ts, pid, inv, tool, phase, syscall, resource, ahash, cap, detail in rows:
            if row_seq == seq:
                detail = '{"forged":true}'
            record = AuditRecord(phase, syscall, pid, inv, tool, resource, ahash, cap, {})
            prev_hash, prev = prev, record_hash(row_seq, ts, record, detail, prev)
            con.execute("UPDATE audit SET detail=?, prev_hash=?, hash=? WHERE seq=?",
                        (detail, prev_hash, prev, row_seq))
        # (and drops the payload the forged record no longer vouches for)
        con.execute("UPDATE audit SET payload=NULL WHERE seq=?", (seq,))
    return rows[-1][0], prev


def _write_lock(db: Path, head: tuple[int, str] | None, signed: anchor.Signed | None) -> None:
    """The forger rewrites the lock file too (no key: any MAC it writes is made up)."""
    fd = os.open(str(db) + ".lock", os.O_RDWR | os.O_TRUNC)
    try:
        if head is not None:
            anchor.write_head(fd, *head, "0" * 64)
        if signed is not None:
            anchor.write_signed(fd, signed)
    finally:
        os.close(fd)


def _signed_by(key: AuditKey, seq: int, digest: str) -> anchor.Signed:
    return anchor.Signed(seq, digest, key.public, key.sign(signing.anchor_message(seq, digest)))


# -- the key -----------------------------------------------------------------------------------


async def test_the_key_is_made_on_first_use_owner_only_outside_the_store(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "audit.key"
    await _history(tmp_path / "libos.db", key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o077 == 0
    public = keys.read_public(keys.public_path(key))
    assert public == AuditKey.open(key, create=False).public
    # Nothing of the private key is in the store or its lock file.
    private = AuditKey.open(key, create=False)._private.private_bytes_raw()
    for path in tmp_path.glob("libos.db*"):
        assert private not in path.read_bytes() and private.hex().encode() not in \
            path.read_bytes()
    _, signed = anchor.read(tmp_path / "libos.db.lock")
    assert signed is not None and signed.key == public and signed.verifies()


async def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    AuditKey.open(key)
    key.chmod(0o640)
    with pytest.raises(InvalidArgument, match="readable or writable by others"):
        async with Kernel.open(tmp_path / "libos.db", audit_key=key):
            pass
    assert not (tmp_path / "libos.db").exists()  # refused before anything was written
    key.chmod(0o600)  # the neighbour: the same key, owner-only, works
    await _history(tmp_path / "libos.db", key, calls=1)


def test_garbage_as_a_key_is_a_typed_error(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    with pytest.raises(InvalidArgument, match="no unencrypted PEM private key"):
        SQLiteStore(tmp_path / "libos.db", audit_key=key)


async def test_the_key_is_found_by_environment_or_by_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_env, by_path = tmp_path / "env.key", tmp_path / "path.key"
    monkeypatch.setenv(KEY_ENV, str(by_env))
    await _history(tmp_path / "a.db")
    await _history(tmp_path / "b.db", by_path)
    env_public = keys.read_public(keys.public_path(by_env))
    path_public = keys.read_public(keys.public_path(by_path))
    assert env_public != path_public
    assert _problems(tmp_path / "a.db") == []  # the local key, from the environment
    assert _problems(tmp_path / "b.db", path_public) == []
    # Each store is signed by its own key, not by the other.
    wrong = _problems(tmp_path / "b.db", env_public)
    assert len(wrong) == 1 and "signed by key" in wrong[0] and "someone else" in wrong[0]


# -- the attack: a rewritten database and lock file, without the key ----------------------------


async def test_a_rewritten_chain_re_signed_with_another_key_is_found(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    await _history(db)
    assert _problems(db) == []
    seq, digest = _forge(db)
    forger = AuditKey.open(tmp_path / "forger.key")
    _write_lock(db, (seq, digest), _signed_by(forger, seq, digest))
    problems = _problems(db)
    assert problems == [f"record {seq}: the chain's anchor is signed by key "
                        f"{signing.fingerprint(forger.public)}, which is not the key given nor "
                        "one it endorsed: the chain was signed by someone else"]
    assert cli(["audit", "--verify", "--db", str(db)]) == 1
    # A broker opening it records the finding in the chain before anything else.
    async with Kernel.open(db) as kernel:
        assert any("a broker opening the store found" in p and "someone else" in p
                   for p in kernel.verify_audit()[1])


@pytest.mark.parametrize("lock", ["old signature", "no signature", "no lock file", "garbled"])
async def test_a_rewritten_chain_without_a_valid_signature_is_found(
        tmp_path: Path, lock: str) -> None:
    db = tmp_path / "libos.db"
    await _history(db)
    _, old = anchor.read(str(db) + ".lock")
    seq, digest = _forge(db)
    if lock == "old signature":
        _write_lock(db, (seq, digest), old)
    elif lock == "no signature":
        _write_lock(db, (seq, digest), None)
    elif lock == "no lock file":
        os.unlink(str(db) + ".lock")
    else:
        assert old is not None
        _write_lock(db, (seq, digest), anchor.Signed(seq, digest, old.key, old.signature))
    problems = _problems(db)
    expected = {"old signature": "does not match its signed anchor: the chain was written again",
                "no signature": "the chain's anchor is not signed",
                "no lock file": "the chain's anchor is not signed",
                "garbled": "signature of the chain's anchor does not verify"}[lock]
    assert len(problems) == 1 and expected in problems[0], problems
    assert cli(["audit", "--verify", "--db", str(db)]) == 1


async def test_records_cut_off_the_end_with_the_lock_file_rewritten_are_found(
        tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    last = await _history(db)
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
        new_head = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    _, signed = anchor.read(str(db) + ".lock")
    _write_lock(db, new_head, signed)
    problems = _problems(db)
    assert problems == [f"record {last - 2}: missing: the chain ends at record {last - 3}, but "
                        f"its signed anchor saw record {last}: records were removed from the end"]


async def test_records_appended_after_the_signed_anchor_are_found(tmp_path: Path) -> None:
    """A forger appends chained records after the signed head and moves the head on; a
    reader finds them unvouched, and so does the next broker (the head's MAC is not its)."""
    db = tmp_path / "libos.db"
    last = await _history(db)
    _, signed = anchor.read(str(db) + ".lock")
    with sqlite3.connect(db) as con:
        ts, prev = con.execute("SELECT ts, hash FROM audit WHERE seq=?", (last,)).fetchone()
        record = AuditRecord("admin", "caps.revoke", resource="forged")
        digest = record_hash(last + 1, ts, record, "{}", prev)
        con.execute("INSERT INTO audit(seq, ts, phase, syscall, resource, detail, prev_hash, "
                    "hash) VALUES (?,?,?,?,?,?,?,?)",
                    (last + 1, ts, "admin", "caps.revoke", "forged", "{}", prev, digest))
    _write_lock(db, (last + 1, digest), signed)
    assert _problems(db) == [f"record {last + 1}: records {last + 1} to {last + 1} are newer "
                             f"than the signed anchor (record {last}): nothing vouches for "
                             "them yet"]
    async with Kernel.open(db) as kernel:
        problems = kernel.verify_audit()[1]
    assert len(problems) == 1 and "no head made with this broker's key vouches" in problems[0]


def test_a_crashed_brokers_unsigned_tail_is_vouched_for_by_the_next_broker(
        tmp_path: Path) -> None:
    """A broker dies after appending and before signing: a reader cannot vouch for the tail
    yet, but the next broker can (its head's MAC was made with the key), signs it and records
    nothing against it."""
    db = tmp_path / "libos.db"
    script = ("import os, sys\n"
              "from broker.store import AuditRecord, SQLiteStore\n"
              "store = SQLiteStore(sys.argv[1])\n"
              "for _ in range(3):\n"
              "    store.append_audit(AuditRecord(phase='admin', syscall='caps.revoke'))\n"
              "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script, str(db)], cwd=ROOT, check=True)
    problems = _problems(db)
    assert problems == ["record 1: records 1 to 3 are newer than the signed anchor (record 0): "
                        "nothing vouches for them yet"]
    SQLiteStore(db).close()
    assert _problems(db) == []


async def test_a_running_kernel_keeps_its_signature_a_moment_behind(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    async with Kernel.open(db) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read"])
        await kernel.call_tool(pid, "now", {})
        await trio.sleep(SIGN_INTERVAL * 4)
        _, signed = anchor.read(str(db) + ".lock")
        assert signed is not None and signed.seq == kernel.store.head_seq
        assert _problems(db) == []  # a third party, while the broker runs


# -- an exported audit ---------------------------------------------------------------------------


async def test_an_export_verifies_with_the_public_key_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, out = tmp_path / "libos.db", tmp_path / "audit.jsonl"
    key = tmp_path / "signer" / "audit.key"
    last = await _history(db, key)
    assert cli(["audit", "--export", str(out), "--db", str(db)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == last + 1
    # The verifier has the export and the public key, and no store, no private key.
    public = tmp_path / "verifier" / "signer.pub"
    public.parent.mkdir()
    public.write_bytes(keys.public_path(key).read_bytes())
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "verifier" / "none.key"))
    os.unlink(db)
    assert cli(["audit", "--verify", "--from", str(out), "--public-key", str(public)]) == 0
    # Without a public key there is nothing to check the signature with.
    assert cli(["audit", "--verify", "--from", str(out)]) == 1
    # The same export checked with another key fails.
    other = AuditKey.open(tmp_path / "other.key")
    assert cli(["audit", "--verify", "--from", str(out), "--public-key",
                str(keys.public_path(other.path))]) == 1


def _export_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("edit", ["detail", "drop", "cut", "signature", "re-signed"])
async def test_an_edited_export_fails(tmp_path: Path, edit: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import json

    db, out = tmp_path / "libos.db", tmp_path / "audit.jsonl"
    await _history(db)
    assert cli(["audit", "--export", str(out), "--db", str(db)]) == 0
    lines = _export_lines(out)
    header = json.loads(lines[0])
    if edit == "detail":
        record = json.loads(lines[3])
        record["detail"] = '{"forged":true}'
        lines[3] = json.dumps(record)
    elif edit == "drop":
        del lines[3]
    elif edit == "cut":
        lines = lines[:-2]
    elif edit == "signature":
        header["anchor"]["signature"] = "0" * 128
        lines[0] = json.dumps(header)
    else:  # forge the chain and re-sign it with another key
        forger = AuditKey.open(tmp_path / "forger.key")
        header["anchor"]["key"] = forger.public
        header["anchor"]["signature"] = forger.sign(signing.anchor_message(
            header["anchor"]["seq"], header["anchor"]["hash"]))
        lines[0] = json.dumps(header)
    out.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli(["audit", "--verify", "--from", str(out), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is False and verdict["problems"]


@pytest.mark.parametrize("content", [b"", b"{}\n", b"not json\n", b"[1]\n",
                                     b'{"format":"libos-audit","version":1,"anchor":7}\n',
                                     b'{"format":"libos-audit","version":1,"anchor":null}\n'
                                     b'{"seq":"1"}\n', b"\xff\xfe\n"])
def test_a_file_that_is_not_an_export_is_a_typed_error(
        tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    assert cli(["audit", "--verify", "--from", str(bad)]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_export_to_a_place_that_cannot_be_written_is_a_typed_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "libos.db"
    SQLiteStore(db).close()
    assert cli(["audit", "--export", str(tmp_path), "--db", str(db)]) == 2
    assert cli(["audit", "--export", str(tmp_path / "no" / "dir.jsonl"), "--db", str(db)]) == 2
    assert cli(["audit", "--export", str(tmp_path / "ok.jsonl"), "--db", str(db)]) == 0


# -- rotation ------------------------------------------------------------------------------------


async def test_a_rotated_key_is_recorded_and_both_keys_verify(tmp_path: Path) -> None:
    db, key = tmp_path / "libos.db", tmp_path / "audit.key"
    await _history(db, key)
    first = keys.read_public(keys.public_path(key))
    assert cli(["audit", "--rotate-key", "--key", str(key)]) == 0
    second = keys.read_public(keys.public_path(key))
    assert second != first and key.stat().st_mode & 0o777 == 0o600
    # The store takes the new key when a broker next opens it, and records the rotation.
    await _history(db, key, calls=1)
    rotations = [r for r in SQLiteStore(db, writer=False).audit_records()
                 if r.record.syscall == KEY_RECORD]
    assert [(r.record.detail["previous"], r.record.detail["key"]) for r in rotations] == \
        [(first, second)]
    _, signed = anchor.read(str(db) + ".lock")
    assert signed is not None and signed.key == second
    assert _problems(db, second) == []
    assert _problems(db, first) == []  # the old key endorsed the new one, in the chain
    assert len(_problems(db, AuditKey.open(tmp_path / "other.key").public)) == 1
    # A second rotation while the store is closed; `--db` records it at once.
    assert cli(["audit", "--rotate-key", "--key", str(key), "--db", str(db)]) == 0
    third = keys.read_public(keys.public_path(key))
    for trusted in (first, second, third):
        assert _problems(db, trusted) == []
    out = tmp_path / "audit.jsonl"
    assert cli(["audit", "--export", str(out), "--db", str(db)]) == 0
    public_first = tmp_path / "first.pub"
    public_first.write_text(first)
    assert cli(["audit", "--verify", "--from", str(out), "--public-key", str(public_first)]) == 0


async def test_a_store_last_signed_several_rotations_ago_takes_each_step(tmp_path: Path) -> None:
    db, key = tmp_path / "libos.db", tmp_path / "audit.key"
    await _history(db, key)
    first = keys.read_public(keys.public_path(key))
    keys.rotate(key)
    keys.rotate(key)
    await _history(db, key, calls=1)
    steps = [r.record.detail for r in SQLiteStore(db, writer=False).audit_records()
             if r.record.syscall == KEY_RECORD]
    assert len(steps) == 2 and steps[0]["previous"] == first
    assert steps[0]["key"] == steps[1]["previous"]
    assert _problems(db, first) == []


async def test_another_key_without_an_endorsement_is_recorded(tmp_path: Path) -> None:
    """A broker with a key that the store's signer never endorsed (the old key was lost, or
    someone else signed) says so in the chain: verification fails from then on."""
    db = tmp_path / "libos.db"
    await _history(db, tmp_path / "a.key")
    await _history(db, tmp_path / "b.key", calls=1)
    b = keys.read_public(keys.public_path(tmp_path / "b.key"))
    problems = _problems(db, b)
    assert "a broker opening the store found" in problems[0]
    # Nothing trusted vouches for the records that granted the first broker's processes their
    # capabilities (invariant 15): they are left out, named, not loaded unchecked (red team).
    assert all("no record in the audit created process" in p or "no anchor vouches" in p
               for p in problems[1:]), problems
    assert "which is not the key given nor one it endorsed" in problems[0]


def test_an_endorsement_by_a_key_the_verifier_does_not_trust_counts_for_nothing(
        tmp_path: Path) -> None:
    trusted = AuditKey.open(tmp_path / "t.key")
    forger = AuditKey.open(tmp_path / "f.key")
    other = AuditKey.open(tmp_path / "o.key")
    forged = signing.Endorsement(forger.public, other.public, forger.sign(
        signing.rotation_message(forger.public, other.public)))
    claimed = signing.Endorsement(trusted.public, other.public, forged.signature)
    assert forged.holds() and not claimed.holds()
    assert signing.endorsement_path(trusted.public, other.public, [forged, claimed]) is None
    assert signing.endorsement_path(forger.public, other.public, [forged]) == [forged]
