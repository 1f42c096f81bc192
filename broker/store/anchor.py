"""The chain's anchor: the head of the audit chain (seq and hash), kept outside the database,
and signed with a key kept outside the store.

The hash chain proves that what is there was not edited, inserted or reordered; on its own it
cannot prove that nothing was cut off the end, nor that the whole chain was not written
again. The writer keeps two things in the store's lock file (beside the database, written
after each commit, never ahead of it):

* the head: the seq and hash it appended last, moved on with every append, with a MAC that
  only a holder of the signing key can make (so the next broker can vouch for records
  appended since the last signature, after a crash);
* the signed anchor: a head (seq, hash) with the public key that signed it and its Ed25519
  signature. The writer signs its head when it opens the store, every moment while records
  come (see `broker.kernel.anchoring`) and when it closes, so a closed store's signed anchor
  is its head.

Whoever rewrites the database and the lock file without the key cannot make a signature
that verifies with the signer's public key: `problems` names what does not hold. A mismatch
found when a broker opens the store is written into the chain itself (an `audit.anchor`
record), so the next append cannot erase the evidence.

The lock file's layout (text, each field padded with spaces to a fixed size):
bytes 0-255 "<seq> <hash> <mac>\\n"; bytes 256-639 "<seq> <hash> <key> <signature>\\n".
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.store import signing

HEAD_BYTES = 256
SIGNED_AT = 256
SIGNED_BYTES = 384


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    mac: str | None


@dataclass(frozen=True, slots=True)
class Signed:
    seq: int
    hash: str
    key: str
    signature: str

    def verifies(self) -> bool:
        return signing.verifies(self.key, self.signature,
                                signing.anchor_message(self.seq, self.hash))

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "hash": self.hash, "key": self.key,
                "signature": self.signature}


def write_head(fd: int, seq: int, digest: str, mac: str) -> None:
    os.pwrite(fd, f"{seq} {digest} {mac}\n".encode().ljust(HEAD_BYTES, b" "), 0)


def write_signed(fd: int, signed: Signed) -> None:
    line = f"{signed.seq} {signed.hash} {signed.key} {signed.signature}\n"
    os.pwrite(fd, line.encode().ljust(SIGNED_BYTES, b" "), SIGNED_AT)


def read(path: str | Path) -> tuple[Head | None, Signed | None]:
    """The head and the signed anchor in a lock file (None for what is not there, or not in
    this shape: a store no broker has written since, or a file someone else wrote)."""
    try:  # (never waited on: a named pipe put in its place is not one, red team 12)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, None
        data = os.pread(fd, SIGNED_AT + SIGNED_BYTES, 0)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    return _head(data[:HEAD_BYTES]), _signed(data[SIGNED_AT:])


def _head(data: bytes) -> Head | None:
    fields = data.decode(errors="replace").split()
    if len(fields) not in (2, 3) or not _is_seq(fields[0]):
        return None
    return Head(int(fields[0]), fields[1], fields[2] if len(fields) == 3 else None)


def _signed(data: bytes) -> Signed | None:
    fields = data.decode(errors="replace").split()
    if len(fields) != 4 or not _is_seq(fields[0]):
        return None
    return Signed(int(fields[0]), *fields[1:])


def _is_seq(field: str) -> bool:
    """A seq as a writer writes it: ASCII digits (`str.isdigit` takes digits `int` does not,
    a superscript two: a lock file holding one crashed the open and `--verify`)."""
    return field.isascii() and field.isdigit()


def problems(head: Head | None, signed: Signed | None, last_seq: int,
             hash_at: Callable[[int], str | None], *, trusts: Callable[[str], bool] | None,
             vouches: Callable[[Head], bool] | None = None, tail: bool = True) -> list[str]:
    """What is wrong between the chain (it ends at `last_seq`) and its anchor, as problem
    lines. `trusts(key)`: whether a signature by that key counts (None: no key to check
    with). `vouches(head)`: whether the head's MAC is good, for a writer that holds the key
    (records after the signed anchor are then vouched for by the head); without it, records
    the signed anchor does not cover are a problem. `tail=False`: other brokers append to the
    chain too (one anchor each), so records after this one's are not its to vouch for."""
    found = []
    if signed is None:
        if last_seq and tail:  # (a broker new to a shared chain has signed nothing yet)
            found.append(f"record {last_seq}: the chain's anchor is not signed: nothing "
                         "proves that the chain was not written again (a store from before "
                         "signed anchors, or its signed anchor was removed)")
    elif not signed.verifies():
        found.append(f"record {signed.seq}: the signature of the chain's anchor does not "
                     "verify: the lock file was edited")
        signed = None
    elif trusts is None:
        found.append("no public key to check the chain's anchor with (give the signer's "
                     "public key)")
    elif not trusts(signed.key):
        found.append(f"record {signed.seq}: the chain's anchor is signed by key "
                     f"{signing.fingerprint(signed.key)}, which is not the key given nor "
                     "one it endorsed: the chain was signed by someone else")
    if signed is not None:
        found += _covers(signed.seq, signed.hash, last_seq, hash_at, "its signed anchor")
    if head is not None and not (signed and (head.seq, head.hash) == (signed.seq, signed.hash)):
        found += _covers(head.seq, head.hash, last_seq, hash_at, "its anchor")
    covered = signed.seq if signed is not None else 0
    if tail and signed is not None and last_seq > covered:
        first = covered + 1
        if vouches is None:
            found.append(f"record {first}: records {first} to {last_seq} are newer than the "
                         f"signed anchor (record {covered}): nothing vouches for them yet")
        elif head is None or head.seq != last_seq or not vouches(head):
            found.append(f"record {first}: records {first} to {last_seq} are newer than the "
                         "signed anchor, and no head made with this broker's key vouches for "
                         "them: they were appended by someone else (or before a crash, by "
                         "a broker with another key)")
    return found


def _covers(seq: int, digest: str, last_seq: int, hash_at: Callable[[int], str | None],
            what: str) -> list[str]:
    if seq > last_seq:
        return [f"record {last_seq + 1}: missing: the chain ends at record {last_seq}, but "
                f"{what} saw record {seq}: records were removed from the end"]
    if seq and hash_at(seq) != digest:
        return [f"record {seq}: does not match {what}: the chain was written again"]
    return []


class Finding(str):
    """A problem line that also says what kind of problem it is (`kind`) and the record it
    concerns (`seq`), for a caller that acts on it: `libos audit --verify --json` lists them."""

    kind: str
    seq: int

    def __new__(cls, kind: str, seq: int, text: str) -> Finding:
        found = super().__new__(cls, text)
        found.kind, found.seq = kind, seq
        return found


@dataclass(frozen=True, slots=True)
class Anchor:
    """One broker's anchor, and where it was found (said in problem lines)."""

    where: str  # "broker b1's anchor in the store", "the anchor file b1.anchor on this host"
    head: Head | None
    signed: Signed | None


def shared_problems(anchors: list[Anchor], last_seq: int, hash_at: Callable[[int], str | None],
                    *, trusts: Callable[[str], bool] | None) -> list[str]:
    """`problems` for a chain many brokers append to, each with an anchor of its own (in the
    store, and in files on this host): each anchor must verify and lie on the chain (nothing
    edited or cut off below it), and the newest signature by a trusted key must reach the
    chain's end. A signature that verifies under a key not trusted here vouches for nothing:
    its anchor is named (`untrusted_key`), and so are the records only it covers
    (`untrusted_tail`), never silently accepted."""
    found: list[str] = []
    covered = 0
    untrusted: list[Anchor] = []
    seen: set[Signed] = set()
    for a in anchors:
        s = a.signed
        if s in seen:  # the same anchor found twice (in the store and in a file here)
            s = None
        elif s is not None:
            seen.add(s)
        if s is not None and not s.verifies():
            found.append(Finding("bad_signature", s.seq, f"record {s.seq}: the signature of "
                                 f"{a.where} does not verify: it was edited or forged"))
            s = None
        if s is not None:
            found += _on_chain(s.seq, s.hash, last_seq, hash_at, a.where)
            if trusts is not None and trusts(s.key):
                covered = max(covered, s.seq)
            else:
                untrusted.append(a)
        if a.head is not None and not (a.signed and (a.head.seq, a.head.hash) == (
                a.signed.seq, a.signed.hash)):
            found += _on_chain(a.head.seq, a.head.hash, last_seq, hash_at,
                               f"{a.where}'s head")
    for a in untrusted:
        assert a.signed is not None
        found.append(Finding("untrusted_key", a.signed.seq, (
            f"record {a.signed.seq}: {a.where} is signed by key "
            f"{signing.fingerprint(a.signed.key)}, which is not trusted here (not this "
            "user's key, nor one trusted with `libos keys trust`, nor given with --trust):"
            " it vouches for nothing")))
    if last_seq > covered:
        first = covered + 1
        reach = min(last_seq, max((a.signed.seq for a in untrusted if a.signed), default=0))
        if reach >= first:
            keys = sorted({signing.fingerprint(a.signed.key) for a in untrusted
                           if a.signed and a.signed.seq >= first})
            found.append(Finding("untrusted_tail", first, (
                f"record {first}: records {first} to {reach} are signed only under keys not "
                f"trusted here ({', '.join(keys)}): nothing trusted vouches for them")))
            first = reach + 1
        if last_seq >= first:
            found.append(Finding("unsigned_tail", first, (
                f"record {first}: records {first} to {last_seq} are newer than every "
                "broker's signed anchor: nothing vouches for them")))
    return found


def _on_chain(seq: int, digest: str, last_seq: int, hash_at: Callable[[int], str | None],
              what: str) -> list[str]:
    kind = "cut_tail" if seq > last_seq else "rewritten"
    return [Finding(kind, seq, line) for line in _covers(seq, digest, last_seq, hash_at, what)]


def unvouched(head: Head | None, signed: Signed | None, last_seq: int,
              hash_at: Callable[[int], str | None], trusts: Callable[[str], bool],
              vouches: Callable[[Head], bool]) -> tuple[int, int] | None:
    """The records (after, upto] the anchor does not vouch for as the chain stands
    (`problems` names why), or None. It vouches up to its signed head, or the head this
    writer's key MACed, whichever is newer and is found in the chain. With no anchor at all
    (a store from before signed anchors: `problems` names it) the whole chain, as before:
    nothing says where it would end."""
    if signed is None and head is None:
        return None
    covered = 0
    if (signed is not None and signed.verifies() and trusts(signed.key)
            and signed.seq <= last_seq and hash_at(signed.seq) == signed.hash):
        covered = signed.seq
    if (head is not None and head.mac is not None and vouches(head)
            and covered < head.seq <= last_seq and hash_at(head.seq) == head.hash):
        covered = head.seq
    return (covered, last_seq) if covered < last_seq else None
