"""`libos keys`: which public keys this user trusts is kept beside its own key, never in the
store; bad input is a typed error that adds nothing, and a trusted-keys file that others may
write is refused rather than read (it could hold anyone's key)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.cli import main as cli
from broker.store import keys, signing
from broker.store.keys import KEY_ENV, AuditKey


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli([*args, "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, json.loads(captured.out)


def test_trust_list_untrust_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "me" / "audit.key"))
    other = AuditKey.open(tmp_path / "other" / "audit.key")
    code, out = run(capsys, "keys", "trust", str(tmp_path / "other" / "audit.key.pub"))
    assert code == 0 and out["trusted"] == other.public
    assert Path(out["file"]).parent == tmp_path / "me" / "trusted"
    assert os.stat(out["file"]).st_mode & 0o777 == 0o600
    code, out = run(capsys, "keys")
    assert out["own"] is None and [k["key"] for k in out["trusted"]] == [other.public]
    # Bad input: garbage as a key, a fingerprint nobody trusts; nothing added or removed.
    (tmp_path / "junk.pub").write_text("not a key")
    code, out = run(capsys, "keys", "trust", str(tmp_path / "junk.pub"))
    assert code != 0 and out["error"] == "INVALID_ARGUMENT"
    code, out = run(capsys, "keys", "untrust", "0123456789abcdef")
    assert code != 0 and out["error"] == "NOT_FOUND"
    code, out = run(capsys, "keys", "untrust", "../../me/audit")
    assert code != 0 and out["error"] == "NOT_FOUND"
    assert list(keys.trusted_keys()) == [other.public]
    code, out = run(capsys, "keys", "untrust", signing.fingerprint(other.public))
    assert code == 0 and keys.trusted_keys() == {}


def test_a_trusted_key_others_may_write_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Another local user who could write into the trusted keys could make any key count:
    verification refuses to read them, with a typed error naming the file."""
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "me" / "audit.key"))
    db = tmp_path / "libos.db"
    from broker.store import SQLiteStore

    SQLiteStore(db).close()  # (a store signed by this user's key)
    planted = AuditKey.open(tmp_path / "planted" / "audit.key")
    _, where = keys.trust(tmp_path / "planted" / "audit.key.pub")
    assert run(capsys, "audit", "--verify", "--db", str(db))[0] == 0
    os.chmod(where, 0o666)
    code, out = run(capsys, "audit", "--verify", "--db", str(db))
    assert code != 0 and out["error"] == "INVALID_ARGUMENT"
    assert "may be written by others" in out["message"] and planted.public not in out["message"]
    os.chmod(where, 0o600)
    os.chmod(where.parent, 0o777)
    code, out = run(capsys, "audit", "--verify", "--db", str(db))
    assert code != 0 and "may be written by others" in out["message"]
