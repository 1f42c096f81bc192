"""The head's MAC is made from a context keyed once and copied per MAC (`keys._keyed_sha256`,
OpenSSL's own HMAC object where there is one): the same bytes as `hmac.new` with the derived
key, so a chain MACed either way checks either way."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from broker.store import keys
from broker.store.keys import AuditKey


def test_the_head_mac_is_hmac_sha256_of_the_derived_key(tmp_path: Path) -> None:
    key = AuditKey.open(tmp_path / "audit.key")
    derived = hashlib.sha256(keys._MAC_DOMAIN + key._private.private_bytes_raw()).digest()
    for seq, digest in ((1, "0" * 64), (2**40, "ab" * 32), (7, "")):
        expected = hmac.new(derived, f"{seq} {digest}".encode(), "sha256").hexdigest()
        assert key.mac(seq, digest) == expected
        assert key.mac(seq, digest) == expected  # (the keyed context is copied, not spent)
    fallback = hmac.new(derived, digestmod="sha256")  # (`hmac`'s, where OpenSSL's is not)
    fallback.update(b"3 " + b"cd" * 32)
    assert key.mac(3, "cd" * 32) == fallback.hexdigest()
    assert AuditKey.open(tmp_path / "other.key").mac(3, "cd" * 32) != fallback.hexdigest()
