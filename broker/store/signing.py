"""Signatures over the audit chain's anchor, checked with a public key alone.

What is signed is the chain's head: its seq and hash, which cover every record before it
(each record's hash covers the one before). The signer is an Ed25519 key kept outside the
store (see `broker.store.keys`); a verifier needs only its public half, as hex.

A key that replaces another (a rotation) is endorsed by the key it replaces: the old key
signs the new one. Trust flows along endorsements, from older keys to newer ones, never back:
a verifier that trusts a key trusts the keys it endorsed (and the keys those endorsed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Each message names what it is, so a signature made for one purpose never passes for another.
ANCHOR_DOMAIN = b"libos audit anchor v1\n"
ROTATION_DOMAIN = b"libos audit key rotation v1\n"
NOTICE_DOMAIN = b"libos anchor notice v2\n"  # (v1: bound to the first record)
KEY_HEX = 64  # an Ed25519 public key, as hex
SIGNATURE_HEX = 128


def anchor_message(seq: int, digest: str) -> bytes:
    return ANCHOR_DOMAIN + f"{seq} {digest}".encode()


def notice_message(store: str, signer: str, seq: int, digest: str) -> bytes:
    """A notice of an anchor (`anchor_notices`), bound to the store it was signed for (as its
    server names it, `AuditReads.notice_store`: the user's one key signs every store) and to the
    broker that tells it; each field in one JSON array (no field runs into the next)."""
    return NOTICE_DOMAIN + json.dumps([store, signer, seq, digest]).encode()


def rotation_message(previous: str, key: str) -> bytes:
    return ROTATION_DOMAIN + f"{previous} {key}".encode()


def is_hex(text: object, length: int) -> bool:
    if not isinstance(text, str) or len(text) != length:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text == text.lower()


def verifies(public: str, signature: str, message: bytes) -> bool:
    """The signature is `public`'s over `message` (anything malformed is simply not)."""
    if not (is_hex(public, KEY_HEX) and is_hex(signature, SIGNATURE_HEX)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(
            bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public: str) -> str:
    """A key as people read it: the first 16 hex digits of its public half."""
    return public[:16] if is_hex(public, KEY_HEX) else "(not a key)"


@dataclass(frozen=True, slots=True)
class Endorsement:
    """`previous` endorses `key`: the signature is `previous`'s over the rotation message."""

    previous: str
    key: str
    signature: str

    def holds(self) -> bool:
        return verifies(self.previous, self.signature, rotation_message(self.previous, self.key))

    def to_json(self) -> dict[str, str]:
        return {"previous": self.previous, "key": self.key, "endorsement": self.signature}


def endorsement_path(start: str, goal: str, endorsements: Iterable[Endorsement]
                     ) -> list[Endorsement] | None:
    """The endorsements that lead from key `start` to key `goal` (each one holding), in
    order; [] when they are the same key; None when none lead there."""
    if start == goal:
        return []
    edges: dict[str, list[Endorsement]] = {}
    for e in endorsements:
        if e.holds():
            edges.setdefault(e.previous, []).append(e)
    paths: dict[str, list[Endorsement]] = {start: []}
    frontier = [start]
    while frontier:
        current = frontier.pop(0)
        for e in edges.get(current, ()):
            if e.key not in paths:
                paths[e.key] = [*paths[current], e]
                if e.key == goal:
                    return paths[e.key]
                frontier.append(e.key)
    return None
