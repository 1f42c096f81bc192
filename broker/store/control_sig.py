"""The signature on a control request (`libos pause/resume/kill/fork`, a row in `control`),
and, under a domain of its own, on an answer to an approval request (`libos approve`, `libos
web`: `broker.store.answer_sig`).

A row is anyone's who writes the database; what makes it the operator's is the signature of a
key the broker trusts (the Ed25519 key that signs the chain's anchor, `broker.store.keys`).
It covers, under its own domain, the store the request was made for (so a request made for one
store is refused by another), the verb, pid and argument as stored, the time it was made and a
random nonce (a copy inserted again is refused: `broker.kernel.control_requests`). The `sig`
column holds "<public key> <store> <nonce> <signature>": the store as a short digest (so a
broker tells "made for another store" from "altered"), the signature over the whole name.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from broker.store import signing

CONTROL_DOMAIN = b"libos control request v1\n"
STORE_HEX = 16  # the store's digest in the column
NONCE_HEX = 32
WINDOW = 300.0  # seconds a signed request stays fresh, either side of the broker's clock


def store_digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:STORE_HEX]


def message(identity: str, verb: str, pid: int | None, arg: str | None, created: float,
            nonce: str) -> bytes:
    """What is signed: each field in one JSON array (no field runs into the next); the time
    as `repr` of the float both backends store and give back exactly."""
    return fields_message(CONTROL_DOMAIN, identity, _control(verb, pid, arg, created), nonce)


def fields_message(domain: bytes, identity: str, fields: list[Any], nonce: str) -> bytes:
    """What is signed under `domain` (one per kind of row): the store and `fields` in order."""
    return domain + json.dumps([identity, *fields, nonce]).encode()


def _control(verb: str, pid: int | None, arg: str | None, created: float) -> list[Any]:
    return [verb, pid, arg, repr(float(created))]


def sign(key: Any, identity: str, verb: str, pid: int | None, arg: str | None,
         created: float) -> str:
    """The `sig` column of a new request, signed by `key` (a `keys.AuditKey`)."""
    return sign_fields(key, CONTROL_DOMAIN, identity, _control(verb, pid, arg, created))


def sign_fields(key: Any, domain: bytes, identity: str, fields: list[Any]) -> str:
    """A `sig` column over `fields` under `domain`: "<public key> <store> <nonce> <sig>"."""
    nonce = secrets.token_hex(NONCE_HEX // 2)
    signature = key.sign(fields_message(domain, identity, fields, nonce))
    return f"{key.public} {store_digest(identity)} {nonce} {signature}"


@dataclass(frozen=True, slots=True)
class Signed:
    key: str
    store: str
    nonce: str
    signature: str

    def holds(self, identity: str, verb: str, pid: int | None, arg: str | None,
              created: float) -> bool:
        return self.holds_fields(CONTROL_DOMAIN, identity, _control(verb, pid, arg, created))

    def holds_fields(self, domain: bytes, identity: str, fields: list[Any]) -> bool:
        return signing.verifies(self.key, self.signature,
                                fields_message(domain, identity, fields, self.nonce))


def parse(sig: object) -> Signed | None:
    """The column's four fields, each well formed, or None (no signature, or not one)."""
    fields = sig.split(" ") if isinstance(sig, str) else []
    if len(fields) != 4:
        return None
    found = Signed(*fields)
    if not (signing.is_hex(found.key, signing.KEY_HEX) and signing.is_hex(found.store, STORE_HEX)
            and signing.is_hex(found.nonce, NONCE_HEX)
            and signing.is_hex(found.signature, signing.SIGNATURE_HEX)):
        return None
    return found
