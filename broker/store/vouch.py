"""What the audit chain vouches for outside itself, and the check of each against it.

Some stored data lives beside the hash chain, not in it, and each piece is bound to a hash
that a chained record carries:

- an intent's payload (a tool call's full arguments): `payload_hash` in its detail is the
  sha256 of the stored bytes, and the decoded value hashes to the record's `args_hash`;
- an outcome's payload (a syscall's full result): `result_hash` in its detail (an
  `intent+outcome` record's too: it keeps its outcome's payload; a tool call written as one
  record keeps both, its arguments then its result, each under its own hash);
- a tool source: its key is its sha256 (content addressed);
- a process's registered tool (a `process_tools` row): the `lang` and `hash` that the last
  successful `tool.register` of that name by that process returned, in its outcome's detail,
  unless a `proc.exec` of that process came after (its tool table became the new image's);
  and the whole row (manifest, schema, labels, description: the authority the tool runs
  with and what a planner is shown of it), by `spec_hash` in that outcome's detail;
- a stored image (an `images` row): the digest of its spec in the `host.image` record, or
  `spec_hash` in the outcome of the `image.register` / `image.commit` that made it (checked
  when an image is loaded, `broker.kernel.images.Images.image`, and by `libos audit
  --verify`).

Everything that reads these (replay, recovery, loading a tool for a run, `libos audit
--verify`) checks them here; what does not match is `Tampered`, naming the record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from broker.errors import Conflict
from broker.store.audit import CLOSES, WHOLE, StoredRecord, args_hash, canonical_json, is_intact
from broker.store.audit_rows import seq_in

PAYLOAD_HASH = "payload_hash"  # in an intent's detail: sha256 of the stored arguments
RESULT_HASH = "result_hash"  # in an outcome's detail: sha256 of the stored result
SPEC_HASH = "spec_hash"  # in tool.register's outcome: sha256 of the registration as stored
REGISTER = "tool.register"
EXEC = "proc.exec"


class Tampered(Conflict):
    """Stored data that the audit chain does not vouch for: edited behind the broker's back."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(payload: bytes) -> Any:
    """A stored payload as the value it was packed from."""
    return msgpack.unpackb(payload, strict_map_key=False)


def payload_parts(stored: StoredRecord) -> tuple[str, ...]:
    """The hash keys that vouch for a record's stored payload, in the order its parts are
    stored: an intent's arguments, an outcome's result; a whole record's result, or (a tool
    call written as one record, `broker.kernel.held_call.HeldCall`) its arguments and its
    result, each packed on its own, one after the other."""
    r = stored.record
    if r.phase == "intent":
        return (PAYLOAD_HASH,)
    if r.phase == WHOLE:
        return tuple(key for key in (PAYLOAD_HASH, RESULT_HASH) if key in r.detail) or (
            RESULT_HASH,)
    return (RESULT_HASH,) if r.phase in CLOSES else (PAYLOAD_HASH,)


def _split(payload: bytes, count: int) -> list[bytes] | None:
    """`payload` as `count` packed values one after the other; None if it is not that."""
    if count == 1:
        return [payload]
    unpacker = msgpack.Unpacker(strict_map_key=False, max_buffer_size=len(payload) or 1)
    unpacker.feed(payload)
    parts, start = [], 0
    try:
        for _ in range(count):
            unpacker.skip()
            end = unpacker.tell()
            parts.append(payload[start:end])
            start = end
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.OutOfData):
        return None
    return parts if start == len(payload) else None


def _parts_or_problem(stored: StoredRecord, payload: bytes | None
                      ) -> tuple[dict[str, bytes], str | None]:
    r = stored.record
    keys = payload_parts(stored)
    expected = [r.detail.get(key) for key in keys]
    what = " and ".join(_WHAT[key] for key in keys)
    if payload is None:
        if all(e is None for e in expected):
            return {}, None
        return {}, f"its stored {what} payload is missing: removed"
    if any(e is None for e in expected):
        return {}, "holds a stored payload that its record does not vouch for: planted"
    parts = _split(payload, len(keys))
    if parts is None or any(digest(part) != e for part, e in zip(parts, expected, strict=True)):
        return {}, f"its stored {what} payload does not match the hash its record carries: edited"
    found = dict(zip(keys, parts, strict=True))
    arguments = found.get(PAYLOAD_HASH)
    if arguments is not None:
        try:
            matches = args_hash(unpack(arguments)) == r.args_hash
        except (ValueError, TypeError, msgpack.UnpackException):
            matches = False
        if not matches:
            return {}, "its stored arguments payload does not match its args_hash: edited"
    return found, None


_WHAT = {PAYLOAD_HASH: "arguments", RESULT_HASH: "result"}


def payload_problem(stored: StoredRecord, payload: bytes | None) -> str | None:
    """What is wrong between a record and the payload stored in its row, or None."""
    return _parts_or_problem(stored, payload)[1]


def check_payload(stored: StoredRecord, payload: bytes | None, part: str | None = None
                  ) -> bytes | None:
    """The payload, if its record is intact and vouches for it; else `Tampered`. `part`:
    `PAYLOAD_HASH` (the arguments) or `RESULT_HASH` (the result) of a record that may hold
    both; by default the record's own (an outcome's or a whole record's: its result)."""
    if not is_intact(stored):
        raise Tampered(f"record {stored.seq}: content does not match its hash: edited")
    found, problem = _parts_or_problem(stored, payload)
    if problem is not None:
        raise Tampered(f"record {stored.seq}: {problem}")
    if part is None:
        part = RESULT_HASH if stored.record.phase in CLOSES else PAYLOAD_HASH
    return found.get(part)


def source_problem(hash_: str, source: bytes) -> str | None:
    if digest(source) != hash_:
        return f"tool source {hash_[:16]}… does not match its hash: edited"
    return None


def spec_digest(spec: dict[str, Any]) -> str:
    """The sha256 of a stored tool registration's canonical JSON: the same for the spec a
    registration stores and for that row read back (key order and spacing do not count)."""
    return digest(canonical_json(spec).encode())


def check_source(hash_: str, source: bytes) -> bytes:
    problem = source_problem(hash_, source)
    if problem is not None:
        raise Tampered(problem)
    return source


@dataclass(frozen=True, slots=True)
class Registration:
    seq: int  # the `tool.register` outcome that vouches for it
    lang: str
    hash: str
    intent: int | None = None  # that outcome's intent
    spec: str | None = None  # `spec_digest` of the row it stored (None: recorded before that)


# An outcome record of `tool.register` after its first, which takes the registration back
# (the commit of its outcome failed, its caller was told so: `ToolTable.taken_back`).
TAKEN_BACK = "taken_back"


@dataclass(slots=True)
class Registrations:
    """The code each process's tool names stand for, as the chain says: fed the records in
    order (intact ones only count)."""

    current: dict[tuple[int, str], Registration] = field(default_factory=dict)
    # Registrations whose outcome is not known (a crash cut them off): their stored row may
    # or may not have been written, and nothing in the chain says what it names.
    unsettled: dict[tuple[int, str], int] = field(default_factory=dict)
    first_by_hash: dict[str, int] = field(default_factory=dict)
    _intents: dict[int, tuple[int, str]] = field(default_factory=dict)
    # The registration each current one replaced (None: none), back if it is taken back.
    _replaced: dict[tuple[int, str], Registration | None] = field(default_factory=dict)

    def see(self, stored: StoredRecord) -> None:
        r = stored.record
        if r.syscall == EXEC and r.pid is not None and r.phase == "outcome":
            # An exec took the process's registered tools away; one that failed left them;
            # after one whose outcome is unknown nobody can say (unsettled: left out).
            if is_intact(stored) and (r.detail.get("ok") or r.detail.get("unknown")):
                for key in [k for k in self.current if k[0] == r.pid]:
                    del self.current[key]
                    if r.detail.get("unknown"):
                        self.unsettled[key] = stored.seq
            return
        if r.syscall != REGISTER or r.pid is None or r.phase not in ("intent", "outcome"):
            return
        if not is_intact(stored):
            return
        if r.phase == "intent":
            args = r.detail.get("args")
            name = args.get("name") if isinstance(args, dict) else None
            if isinstance(name, str):
                self._intents[stored.seq] = (r.pid, name)
                self.unsettled[(r.pid, name)] = stored.seq
            return
        intent = seq_in(r.detail, "intent")  # (a writer's of another type names none)
        key = self._intents.pop(intent, None)  # type: ignore[arg-type]
        if key is not None and self.unsettled.get(key) == intent and not r.detail.get("unknown"):
            del self.unsettled[key]  # settled: ok, or failed before anything was stored
        if r.detail.get(TAKEN_BACK) is True:
            name = r.detail.get("name")
            if isinstance(name, str):
                self._take_back((r.pid, name), intent)
            return
        result = r.detail.get("result")
        if r.detail.get("ok") and isinstance(result, dict) and all(
                isinstance(result.get(k), str) for k in ("name", "lang", "hash")):
            key = (r.pid, result["name"])
            self._replaced[key] = self.current.get(key)
            spec = r.detail.get(SPEC_HASH)
            self.current[key] = Registration(
                stored.seq, result["lang"], result["hash"],
                intent, spec if isinstance(spec, str) else None)
            self.first_by_hash.setdefault(result["hash"], stored.seq)

    def _take_back(self, key: tuple[int, Any], intent: Any) -> None:
        """The registration `intent` made of `key`, if it is the current one, is undone: the
        one it replaced is current again."""
        reg = self.current.get(key)  # type: ignore[arg-type]
        if reg is None or reg.intent != intent or not isinstance(intent, int):
            return
        prior = self._replaced.pop(key, None)  # type: ignore[arg-type]
        if prior is None:
            del self.current[key]  # type: ignore[arg-type]
        else:
            self.current[key] = prior  # type: ignore[index]

    def is_unsettled(self, pid: int, name: str) -> bool:
        return (pid, name) in self.unsettled

    def tool_problem(self, pid: int, name: str, spec: dict[str, Any]) -> str | None:
        """What is wrong with a stored registration (a `process_tools` row), or None."""
        reg = self.current.get((pid, name))
        lang, hash_ = spec.get("lang"), spec.get("hash")
        if reg is None:
            return (f"process {pid}'s tool {name!r} is stored as registered, but no record in "
                    "the audit registered it: planted")
        if (lang, hash_) != (reg.lang, reg.hash):
            return (f"record {reg.seq}: process {pid} registered tool {name!r} as {reg.lang} "
                    f"code {reg.hash[:16]}…, but its stored registration names {lang} code "
                    f"{str(hash_)[:16]}…: edited")
        # A registration recorded before the chain vouched for the whole row carries no
        # digest of it: its code (lang, hash) is all that can be checked.
        if reg.spec is not None and spec_digest(spec) != reg.spec:
            return (f"record {reg.seq}: process {pid}'s stored registration of tool {name!r} "
                    "is not the one it recorded (its manifest, schema, labels or description "
                    "differ): edited")
        return None


def refused_tool(spec: dict[str, Any], problem: str) -> dict[str, Any]:
    """What a stored registration the chain does not vouch for loads as: nothing of its
    edited content is used (no schema, no authority), and calling it fails as `Tampered`."""
    return {"lang": str(spec.get("lang"))[:16], "hash": None, "description": "",
            "schema": {"type": "object"}, "manifest": [], "refused": problem}


HOST_IMAGE = "host.image"
IMAGE_MADE = ("image.register", "image.commit")  # a process's: its outcome carries SPEC_HASH


@dataclass(slots=True)
class ImageDigests:
    """The images the chain registered, each (name, version) with the `spec_digest` of its
    row as stored and the records that vouch for it: fed the records in order. The host's
    `host.image` carries the digest of the spec it stores (`spec.sha256`); a process's
    `image.register` / `image.commit` outcome, its `SPEC_HASH`. An image registered before
    its record carried a digest (an older broker's) is not checked: nothing in the chain
    says what it held; nor one whose registration a crash cut off (its intent's outcome
    unknown: the row may or may not have been stored)."""

    found: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    named: set[tuple[str, str]] = field(default_factory=set)  # by an intact record
    edited: dict[tuple[str, str], int] = field(default_factory=dict)  # named by a broken one
    unsettled: dict[int, str] = field(default_factory=dict)  # intent seq: the image's name
    newest: dict[str, str] = field(default_factory=dict)  # name: the version registered
    # last (first registered last: registering an older version again does not make it newer)
    seen: int = 0  # the last record read (`Store.image_vouches` goes on after it)

    def see(self, stored: StoredRecord) -> None:
        self.seen = max(self.seen, stored.seq)
        r = stored.record
        d = r.detail
        if r.syscall == HOST_IMAGE and r.phase == "admin" and r.pid is None:
            spec = d.get("spec")
            key, hash_ = (d.get("image"), d.get("version")), (
                spec.get("sha256") if isinstance(spec, dict) else None)
        elif r.syscall in IMAGE_MADE and r.phase == "outcome":
            self._settle(d)
            result = d.get("result")
            if not d.get("ok") or not isinstance(result, dict):
                return
            key, hash_ = (result.get("name"), result.get("version")), d.get(SPEC_HASH)
        elif r.syscall in IMAGE_MADE and r.phase == "intent":
            name = _made_name(d.get("args"))
            if name is not None and is_intact(stored):
                self.unsettled[stored.seq] = name
            return
        else:
            return
        if not all(isinstance(k, str) for k in key):
            return
        # The version registered last: first registered last (an older one registered
        # again is not newer), a broken record's counted too (a load by name alone then
        # fails on it, never taking an older, wider version in its place).
        if not self.knows(*key):
            self.newest[key[0]] = key[1]  # type: ignore[index]
        if not is_intact(stored):
            self.edited.setdefault(key, stored.seq)  # type: ignore[arg-type]
            return
        self.named.add(key)  # type: ignore[arg-type]
        if isinstance(hash_, str):
            self.found.setdefault(key, {}).setdefault(hash_, stored.seq)  # type: ignore[arg-type]

    def _settle(self, detail: dict[str, Any]) -> None:
        intent = detail.get("intent")
        if isinstance(intent, int) and not detail.get("unknown"):
            self.unsettled.pop(intent, None)

    def knows(self, name: str, version: str) -> bool:
        """Whether a record (intact or not) registered `name`:`version`."""
        key = (name, version)
        return key in self.named or key in self.edited or key in self.found

    def image_problem(self, name: str, version: str, spec: dict[str, Any], *,
                      broken_records: bool = True) -> str | None:
        """What is wrong with a stored image (an `images` row), or None: edited (its digest
        not the one its record carries), its record edited (unless not `broken_records`:
        `libos audit --verify` names that record already), or planted (no record at all)."""
        key = (name, version)
        vouched = self.found.get(key)
        if vouched:
            if spec_digest(spec) in vouched:
                return None
            return (f"record {min(vouched.values())}: image {name}:{version} is stored "
                    "otherwise than it was registered (its tools, manifests, needs, denies or "
                    "planner differ): edited")
        if key in self.edited:
            if not broken_records:
                return None
            return (f"record {self.edited[key]}: the record that registered image "
                    f"{name}:{version} does not match its hash: edited")
        if key in self.named or name in self.unsettled.values():
            return None  # registered by an older broker, or by a registration cut off
        return (f"image {name}:{version} is stored as registered, but no record in the audit "
                "registered it: planted")


def _made_name(args: Any) -> str | None:
    """The image name an `image.register` / `image.commit` intent's arguments give."""
    if not isinstance(args, dict):
        return None
    image = args.get("image")
    name = image.get("name") if isinstance(image, dict) else args.get("name")
    return name if isinstance(name, str) else None
