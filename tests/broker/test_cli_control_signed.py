"""`libos resume` signs its request with its user's audit key (red team 15): the operator's
real command, a subprocess, is applied by a broker that trusts the key, and on the record with
it; a user with no key gets one typed line, and no row is left."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import trio

from broker import Kernel
from broker.store import control_sig
from broker.store.audit import CONTROL_RECORD
from broker.store.keys import KEY_ENV
from tests.conftest import open_image


async def _libos(*args: str, env: dict[str, str] | None = None) -> trio.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "broker.cli", *args],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env=env)


async def test_libos_resume_signed_by_its_users_key_is_applied(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        done = await _libos("resume", str(pid), "--db", str(db_path), "--json")
        assert done.returncode == 0, done.stderr.decode()
        assert kernel.process_info(pid)["state"] != "paused"
        [taken] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
        assert taken["phase"] == "admin", taken
        assert taken["detail"]["key"] == kernel.store.signer  # (the same user's key)
        with sqlite3.connect(db_path) as db:
            [(sig,)] = db.execute("SELECT sig FROM control WHERE pid=?", (pid,)).fetchall()
        assert control_sig.parse(sig).nonce == taken["detail"]["nonce"]


async def test_libos_pause_without_a_key_is_one_typed_line_and_no_row(
        db_path: Path, tmp_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        env = {**os.environ, KEY_ENV: str(tmp_path / "nobody" / "audit.key")}
        done = await _libos("pause", str(pid), "--db", str(db_path), env=env)
        err = done.stderr.decode()
        assert done.returncode != 0 and done.stdout == b""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("NOT_FOUND: no audit key at"), err
        assert "Traceback" not in err
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM control").fetchone() == (0,)
        assert kernel.process_info(pid)["state"] != "paused"
        assert not (tmp_path / "nobody").exists()  # (no key made for it either)


async def test_libos_resume_signed_by_a_key_the_broker_does_not_trust_is_one_typed_line(
        db_path: Path, tmp_path: Path) -> None:
    from broker.store.keys import AuditKey

    other = AuditKey.open(tmp_path / "other" / "audit.key")  # (another user's, not trusted)
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        env = {**os.environ, KEY_ENV: str(other.path)}
        done = await _libos("resume", str(pid), "--db", str(db_path), "--wait", "30", env=env)
        err = done.stderr.decode()
        assert done.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("NOT_CAPABLE: the request is signed by key"), err
        assert "does not trust" in err
        assert kernel.process_info(pid)["state"] == "paused"
        [refused] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
        assert refused["phase"] == "rejected" and refused["detail"]["key"] == other.public
