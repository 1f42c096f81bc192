"""Red team 9 on `broker.store.recordsig` (lane sharedvouch): a database writer holding no
trusted key makes a shared open slow by interleaving `audit.key` records with vouching
records.

Each `audit.key` record cleared the trusted-signer cache, and the next vouching record's
signer was then looked up with `signing.endorsement_path`, which checks the Ed25519
signature of every endorsement seen so far: n such pairs cost about n*n/2 verifications
(MEDIUM, a denial of service: 3,000 pairs, cheap to append, cost every shared broker's open
4.5 million verifications, about 9 minutes of CPU at 117 us each here, against about 6 us a
record for the walk). Each endorsement must be
verified once as the walk meets it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.store import signing
from broker.store.audit import (
    GENESIS,
    KEY_RECORD,
    AuditRecord,
    StoredRecord,
    canonical_json,
    record_hash,
)
from broker.store.ends import PROC_END
from broker.store.recordsig import MARKER, RecordSignatures, record_message


def _public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


class _Chain:
    def __init__(self) -> None:
        self.records: list[StoredRecord] = []

    def add(self, record: AuditRecord, sign: Ed25519PrivateKey | None = None) -> StoredRecord:
        seq = len(self.records) + 1
        prev = self.records[-1].hash if self.records else GENESIS
        detail_json = canonical_json(record.detail)
        digest = record_hash(seq, 1.0, record, detail_json, prev)
        sig = None if sign is None else (
            f"{_public(sign)} {sign.sign(record_message(seq, digest)).hex()}")
        stored = StoredRecord(seq, 1.0, record, detail_json, prev, digest, sig)
        self.records.append(stored)
        return stored


def _key_record(previous: Ed25519PrivateKey, key: Ed25519PrivateKey) -> AuditRecord:
    """An `audit.key` record as the broker writes it, its endorsement holding (made by the
    attacker's own keys: it leads nowhere trusted)."""
    endorsement = previous.sign(signing.rotation_message(_public(previous), _public(key)))
    return AuditRecord(phase="admin", syscall=KEY_RECORD, detail={
        "previous": _public(previous), "key": _public(key), "endorsement": endorsement.hex()})


def test_key_records_between_vouching_ones_verify_each_endorsement_once(monkeypatch) -> None:
    trusted, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    chain = _Chain()
    chain.add(AuditRecord(phase="admin", syscall=MARKER, detail={}))
    genuine = chain.add(AuditRecord(phase="admin", syscall=PROC_END, pid=1,
                                    detail={"state": "exited"}), sign=trusted)
    pairs = 60
    others = [Ed25519PrivateKey.generate() for _ in range(pairs)]
    forged = []
    for other in others:
        chain.add(_key_record(attacker, other))
        forged.append(chain.add(AuditRecord(phase="admin", syscall=PROC_END, pid=2,
                                            detail={"state": "exited"}), sign=other))
    checked = []
    verifies = signing.verifies

    def counted(public: str, signature: str, message: bytes) -> bool:
        checked.append(message)
        return verifies(public, signature, message)

    monkeypatch.setattr(signing, "verifies", counted)
    signatures = RecordSignatures([_public(trusted)])
    for stored in chain.records:
        signatures.see(stored)
    # What the walk decides is unchanged: the genuine end holds, every forged one vouches
    # for nothing (the attacker's keys are endorsed only by the attacker's).
    assert genuine.seq not in signatures.unsigned
    assert {s.seq for s in forged} <= signatures.unsigned
    # Each endorsement checked once (fails on main: 60 pairs made 1,830 checks).
    assert len(checked) <= 2 * pairs


def test_a_key_endorsed_by_a_trusted_one_still_counts() -> None:
    """The neighbour: a genuine rotation (the trusted key endorses a new one) makes the new
    key's signed records vouch, also when the endorsement comes after the attacker's noise."""
    trusted, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rotated, noise = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    chain = _Chain()
    chain.add(AuditRecord(phase="admin", syscall=MARKER, detail={}))
    before = chain.add(AuditRecord(phase="admin", syscall=PROC_END, pid=3,
                                   detail={"state": "exited"}), sign=rotated)
    chain.add(_key_record(attacker, noise))
    chain.add(_key_record(noise, rotated))  # (the attacker's endorsement: not trusted)
    still = chain.add(AuditRecord(phase="admin", syscall=PROC_END, pid=3,
                                  detail={"state": "exited"}), sign=rotated)
    chain.add(_key_record(trusted, rotated))
    after = chain.add(AuditRecord(phase="admin", syscall=PROC_END, pid=3,
                                  detail={"state": "exited"}), sign=rotated)
    signatures = RecordSignatures([_public(trusted)])
    for stored in chain.records:
        signatures.see(stored)
    assert {before.seq, still.seq} <= signatures.unsigned
    assert after.seq not in signatures.unsigned
