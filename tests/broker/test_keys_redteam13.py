"""Red team 13: the audit key loaded through cryptography's own PEM loaders (1d123f9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from broker.errors import InvalidArgument
from broker.store import keys

# A key on a curve OpenSSL knows and cryptography does not (secp112r1).
ODD_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA5vAqUuSVZZvddcPOQ8XqEg
Ax4ABJG2d8CVmR8hFgwriK2iFhHLUsFoBx8YHqCk9fo=
-----END PRIVATE KEY-----
"""
ODD_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEkbZ3wJWZHyEWDCuIraIWEctSwWgHHxge
oKT1+g==
-----END PUBLIC KEY-----
"""


def test_a_public_key_on_an_unsupported_curve_is_refused_as_bad_input(tmp_path: Path) -> None:
    """LOW: a public key handed to a verifier (`trust`, `read_public`) on a curve cryptography
    does not support raised `UnsupportedAlgorithm` (a traceback) instead of InvalidArgument,
    as every other key that is not Ed25519 is."""
    given = tmp_path / "other.pub"
    given.write_bytes(ODD_PUBLIC)
    with pytest.raises(InvalidArgument, match="no Ed25519 public key"):
        keys.read_public(given)
    with pytest.raises(InvalidArgument):
        keys.trust(given, tmp_path / "audit.key")


def test_a_private_key_on_an_unsupported_curve_is_refused_as_bad_input(tmp_path: Path) -> None:
    """LOW: the same for the audit key itself (a broker's start, `libos key`)."""
    where = tmp_path / "audit.key"
    where.write_bytes(ODD_PRIVATE)
    where.chmod(0o600)
    with pytest.raises(InvalidArgument, match="no unencrypted PEM private key"):
        keys.AuditKey.open(where)


async def test_a_fifo_in_the_keys_place_is_refused_not_waited_on(tmp_path: Path) -> None:
    """LOW: a FIFO at the key's path (or its rotations') hung the broker's start for ever
    (opened blocking, waiting for a writer; `read_public` already opened without blocking)."""
    where = tmp_path / "audit.key"
    os.mkfifo(where, 0o600)
    with trio.fail_after(5):
        with pytest.raises(InvalidArgument, match="not a regular file"):
            await trio.to_thread.run_sync(keys.AuditKey.open, where, abandon_on_cancel=True)
