"""An exported audit, and its verification by a third party with a public key alone.

The format (JSON Lines: one JSON object per line, ASCII, each line at most `MAX_LINE` bytes):

* line 1, the header: `{"format": "libos-audit", "version": 1, "anchor": ANCHOR}`, where
  ANCHOR is the store's signed anchor, `{"seq", "hash", "key", "signature"}` (the key and the
  signature in hex), or null for a store that has none;
* then one line per record, in order from record 1 to the anchor's: `{"seq", "ts", "pid",
  "inv", "tool", "phase", "syscall", "resource", "args_hash", "cap_id", "detail",
  "prev_hash", "hash"}`. `detail` is the JSON text the record's hash covers, as stored.

A record's hash is the SHA-256 (hex) of the canonical JSON (keys sorted, no spaces, UTF-8) of
`[seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail, prev_hash]`;
record 1's `prev_hash` is 64 zeros. The signature is Ed25519, by `key`, over the bytes
`"libos audit anchor v1\\n<seq> <hash>"`. Payloads kept beside records (full arguments and
results) are not exported: the records carry their hashes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

from broker.errors import InvalidArgument
from broker.store import anchor, signing
from broker.store.audit import GENESIS, AuditRecord, StoredRecord, verify_chain
from broker.store.interface import Store
from broker.store.verify import chain_notes, trusted_keys, trusts

FORMAT = "libos-audit"
VERSION = 1
MAX_LINE = 8 * 1024 * 1024
_TEXT = ("tool", "resource", "args_hash", "cap_id")


def export(store: Store, path: str | Path) -> int:
    """Write the records the store's signed anchor covers, and the anchor, to `path`
    (whole, or not at all). Returns how many records were written."""
    signed = newest_anchor(store)
    upto = signed.seq if signed is not None else store.last_seq()
    temporary = Path(f"{path}.part-{os.getpid()}")
    count = 0
    try:
        out = open(temporary, "w", encoding="ascii")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    try:
        with out:
            _line(out, {"format": FORMAT, "version": VERSION,
                        "anchor": signed.to_json() if signed is not None else None})
            for stored in store.audit_records(limit=upto):
                r = stored.record
                _line(out, {"seq": stored.seq, "ts": stored.ts, "pid": r.pid, "inv": r.inv,
                            "tool": r.tool, "phase": r.phase, "syscall": r.syscall,
                            "resource": r.resource, "args_hash": r.args_hash,
                            "cap_id": r.cap_id, "detail": stored.detail_json,
                            "prev_hash": stored.prev_hash, "hash": stored.hash})
                count += 1
        os.replace(temporary, path)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return count


def newest_anchor(store: Store) -> anchor.Signed | None:
    """The store's signed anchor (its file on this host), or a newer one the store's writers
    published (many brokers, another host) that verifies under a key this user trusts."""
    _, signed = store.read_anchor()
    trusted = trusted_keys(store, None, ())
    for _, published in store.published_anchors():
        if (published.key in trusted and published.verifies()
                and (signed is None or published.seq > signed.seq)):
            signed = published
    return signed


def _line(out: IO[str], value: dict[str, Any]) -> None:
    out.write(json.dumps(value, ensure_ascii=True, separators=(",", ":")) + "\n")


def verify_export(path: str | Path, public_key: str | None) -> tuple[int, list[str]]:
    """(records checked, problems) of an export, checked with `public_key` (hex) alone.
    A file that is not an export in this format is `InvalidArgument`, naming the line."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, whatever happens)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    with f:
        header = _read(f, 1)
        if header is None or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise InvalidArgument(f"{path} is not a libos audit export (version {VERSION})")
        signed = _anchor(header.get("anchor"))
        found: list[str] = []
        endorsements: list[signing.Endorsement] = []
        last = [0, GENESIS]
        anchored: dict[int, str] = {}

        def walk() -> Iterator[StoredRecord]:
            number = 1
            while (value := _read(f, number := number + 1)) is not None:
                stored = _record(value, number)
                found.extend(chain_notes(stored, endorsements))
                if signed is not None and stored.seq == signed.seq:
                    anchored[stored.seq] = stored.hash
                last[:] = [stored.seq, stored.hash]
                yield stored

        count, problems = verify_chain(walk())
    lines = [str(p) for p in problems] + found
    return count, lines + anchor.problems(
        None, signed, int(last[0]), anchored.get,
        trusts=None if public_key is None else partial(trusts, public_key, endorsements))


def _read(f: IO[bytes], number: int) -> dict[str, Any] | None:
    line = f.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise InvalidArgument(f"line {number}: longer than {MAX_LINE} bytes")
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"line {number}: not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"line {number}: not a JSON object")
    return value


def _anchor(value: Any) -> anchor.Signed | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or not _is_int(value.get("seq"))
            or not all(isinstance(value.get(k), str) for k in ("hash", "key", "signature"))):
        raise InvalidArgument("line 1: the anchor is not {seq, hash, key, signature}")
    return anchor.Signed(value["seq"], value["hash"], value["key"], value["signature"])


def _record(value: dict[str, Any], number: int) -> StoredRecord:
    def bad(field: str) -> InvalidArgument:
        return InvalidArgument(f"line {number}: not a record: {field!r} is missing or of the "
                               "wrong type")

    if not _is_int(value.get("seq")):
        raise bad("seq")
    ts = value.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise bad("ts")
    for field in ("pid", "inv"):
        if value.get(field) is not None and not _is_int(value[field]):
            raise bad(field)
    for field in _TEXT:
        if value.get(field) is not None and not isinstance(value[field], str):
            raise bad(field)
    for field in ("phase", "syscall", "detail", "prev_hash", "hash"):
        if not isinstance(value.get(field), str):
            raise bad(field)
    try:
        detail = json.loads(value["detail"])
    except ValueError:
        detail = None  # not what the broker writes: the record's hash check reports it
    record = AuditRecord(value["phase"], value["syscall"], value.get("pid"), value.get("inv"),
                         *(value.get(field) for field in _TEXT),
                         detail=detail if isinstance(detail, dict) else {})
    return StoredRecord(value["seq"], ts, record, value["detail"], value["prev_hash"],
                        value["hash"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
