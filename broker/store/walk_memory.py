"""What `libos ps` keeps of its walk of the audit chain between runs (docs/DESIGN.md, `libos
ps` in §6, and §9), so a second run walks only the records appended since.

A reader counts ends as the broker's next open does (`anchored_reads`): that takes a walk of
the whole chain (`broker.store.links`). What the walk found up to the head the signed anchor
vouches for (never past it) is kept in this user's key directory, `<key dir>/walks/<the name
of the store's remembered anchor>` (`remembered.place`: the sha256 of its location), written
whole under another name and moved into place (owner-only), with a MAC by this user's key
(`AuditKey.walk_mac`, a domain of its own) over all of it: the store's name, location and
first record's hash, the head it covers (seq and hash) and the walk's fields (`KEPT` of the links,
the ends and the labels). The next run takes it only if the MAC holds, it names this store
(location and first record), its head record is still there with its hash, and the anchor
this run counts by covers it (seq at or past it); it then walks only the records after that
head, linked to it as a full walk links them. Anything else (no file, another store's,
edited, truncated, oversized, another version, a key not found) is ignored: the whole chain
is walked, as before, and kept again.

What it does not see that a full walk did: a record at or below the kept head edited in
place since (its hash column left, so the head keeps its hash), or removed or put in below
it with the head's seq and hash left. The kept walk is of the chain as it was, intact or not,
when walked; a full walk now finds the break and, failing closed, counts no take-back or
result digest before it (the broker's next open does so too). `libos audit --verify` names
it. A chain rewritten below the head (hashed again) changes the head's hash: caught.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from broker.store import remembered
from broker.store.audit import ChainProblem
from broker.store.keys import AuditKey, key_path
from broker.store.links import ChainLinks

VERSION = 2  # (2: names the store's location, for `walk_sweep`)
MAX_KEPT = 64 * 1024 * 1024  # bytes: a bigger file is not read (nor written)
_DIR = "walks"


class WalkMemory:
    """Where the walk of one store is kept, and the key that MACs it."""

    def __init__(self, key: AuditKey, name: str, first: str | None,
                 location: str | None = None) -> None:
        self.key, self.name, self.first, self.location = key, name, first, location
        self.path = walks_dir(key) / name
        self.head = 0  # the seq the walk recalled covers (0: none)

    @classmethod
    def of(cls, store: Any) -> WalkMemory | None:
        """The memory of `store`'s walk, where this user has a key (none: nothing kept)."""
        memory = getattr(store, "anchor_memory", lambda: None)()
        if memory is None or store.chain_links().signatures is not None:
            return None  # (a store that remembers no anchor here, PostgreSQL's; a shared one's
            # walk holds its records' signatures too, not kept)
        try:
            key = AuditKey.open(key_path(), create=False)
        except Exception:  # (no key, one not this user's alone, unreadable: walk it all)
            return None
        path = getattr(store, "path", None)  # (where the store is: `walk_sweep` looks,
        # as the walk's name says it: through a link to its directory, the directory's own)
        return cls(key, memory.name, store.hash_at(1),
                   None if path is None else remembered.location(path))

    @classmethod
    def path_of(cls, db: Path | str) -> Path | None:
        """Where this user keeps the walk of the store at `db` (None: no key, nothing kept)."""
        from broker.store.opening import open_store  # (here: opening reaches this module)

        store = open_store(db, writer=False)
        try:
            memory = cls.of(store)
        finally:
            store.close()
        return None if memory is None else memory.path

    def recall(self, store: Any, links: ChainLinks, anchored: int) -> None:
        """Put the kept walk into `links` (which walked nothing yet) if it stands: its head
        a record of this store, still there with its hash, at or below `anchored`."""
        if links.linked[0] != 0:
            return
        kept = self._read()
        if kept is None:
            return
        seq, digest = kept["head"]
        if not 0 < seq <= anchored or store.hash_at(seq) != digest:
            return  # (cut or rewritten below the head, or an anchor put back older)
        try:
            fields = {part: {name: _decode(value) for name, value in kept[part].items()}
                      for part, _ in _parts(links)}
            broken = kept["broken"]
            problem = None if broken is None else ChainProblem(int(broken[0]), str(broken[1]))
        except Exception:  # (its MAC holds: a version's difference, never a writer's)
            return
        parts = _parts(links)
        if any(set(fields[part]) != set(obj.KEPT) for part, obj in parts) or tuple(
                fields["links"]["_linked"]) != (seq, digest):
            return
        for part, obj in parts:
            for name, value in fields[part].items():
                setattr(obj, name, value)
        links.broken = problem
        self.head = seq

    def keep(self, links: ChainLinks) -> None:
        """Keep what `links` walked, if it covers more than what was recalled (a cache: a
        failure to write it is no failure of `ps`)."""
        seq, digest = links.linked
        if seq <= self.head:
            return
        broken = links.broken
        try:
            body = json.dumps({
                "version": VERSION, "store": self.name, "first": self.first,
                "location": self.location,
                "head": [seq, digest],
                "broken": None if broken is None else [broken.seq, broken.what],
                **{part: {name: _encode(getattr(obj, name)) for name in obj.KEPT}
                   for part, obj in _parts(links)}},
                separators=(",", ":")).encode()
        except (ValueError, RecursionError):  # (a value too deep to write: walked again)
            return
        data = self.key.walk_mac(body).encode() + b"\n" + body
        if len(data) > MAX_KEPT:
            return
        _write_whole(self.path, data)

    def _read(self) -> dict[str, Any] | None:
        """The kept walk, if its MAC holds and it is this store's, of this version."""
        kept = read_kept(self.key, self.path)
        if kept is None or kept.get("version") != VERSION or kept.get(
                "store") != self.name or kept.get("first") != self.first:
            return None
        head = kept.get("head")
        if not (isinstance(head, list) and len(head) == 2 and type(head[0]) is int
                and isinstance(head[1], str)):
            return None
        return kept


def walks_dir(key: AuditKey) -> Path:
    """Where this user's key keeps the walks (`<key dir>/walks/`)."""
    return key.path.parent / _DIR


def read_kept(key: AuditKey, path: Path, expect: os.stat_result | None = None
              ) -> dict[str, Any] | None:
    """The walk kept at `path` (its link never followed), if it is a regular file no bigger
    than `MAX_KEPT` whose MAC by `key` holds: the JSON object it holds (any version's). With
    `expect`, only the file `os.lstat` found there (the same device and inode)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEPT or (
                expect is not None and (st.st_dev, st.st_ino) != (expect.st_dev,
                                                                  expect.st_ino)):
            return None
        data = _read_all(fd, st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)
    mac, _, body = data.partition(b"\n")
    if not hmac.compare_digest(mac, key.walk_mac(body).encode()):
        return None
    try:
        kept = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return kept if isinstance(kept, dict) else None


def _parts(links: ChainLinks) -> tuple[tuple[str, Any], ...]:
    """The objects a walk fills, each with the name its fields are kept under."""
    labels = links.process_labels
    return (("links", links), ("ends", links.process_ends), ("labels", labels),
            ("label_firsts", labels.firsts))


def _read_all(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_whole(path: Path, data: bytes) -> None:
    """`data` at `path`, written under a name of its own (made here, owner-only) and moved
    into place: a reader finds the old file or the new one, never a part, and nothing that
    was there is written into."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError:  # (a key directory this user cannot write: nothing kept)
        return
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


# The walk's fields hold dicts keyed by ints, sets and tuples (and records' values, as JSON
# read them): each is tagged, so it reads back as it was.

def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return {"d": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"s": [_encode(v) for v in value]}
    if isinstance(value, tuple):
        return {"t": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, items),) = value.items()
    if tag == "d":
        return {_decode(k): _decode(v) for k, v in items}
    if tag == "s":
        return {_decode(v) for v in items}
    if tag == "t":
        return tuple(_decode(v) for v in items)
    raise ValueError(f"no tag {tag!r}")
