"""The audit signing key: where it lives, how it is made, and how it is replaced.

The key is kept outside the store, so whoever can write the database and its lock file
cannot sign a rewritten chain. It is found, in order, at the path a caller gives, at
`$LIBOS_AUDIT_KEY`, or at `$XDG_CONFIG_HOME/libos/audit.key` (`~/.config/libos/audit.key`).
A broker makes it on first use; it is refused unless only its owner can read it.

Beside the private key (PEM, PKCS 8) lie `<key>.pub`, its public half (PEM), which is what
a verifier is given, and `<key>.rotations`, one line per rotation ("previous key, new key,
the previous key's endorsement", in hex), which tells a broker that an anchor signed by a key
this one replaced is still its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Any

# The PEM loaders `cryptography.hazmat.primitives.serialization` re-exports, taken from where
# they are made (the same functions: tests/broker/test_demo_imports.py
# checks). That package
# imports its SSH formats as well, ~5 ms of CPU at every broker's start; only writing a key
# needs it (its `private_bytes` imports it), so `_write_private` imports it there.
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.bindings._rust import openssl as _openssl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import InvalidArgument, NotFound
from broker.store import signing
from broker.store.signing import Endorsement

KEY_ENV = "LIBOS_AUDIT_KEY"
MAX_KEY_FILE = 64 * 1024
_MAC_DOMAIN = b"libos audit head mac v1\n"
# What `libos ps` keeps of its walk of a chain (`broker.store.walk_memory`): a MAC of its own
# domain, so no head's MAC is one of a kept walk's, nor the other way round.
_WALK_DOMAIN = b"libos ps walk mac v1\n"


def key_path(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "libos" / "audit.key"


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def rotations_path(path: Path) -> Path:
    return path.with_name(path.name + ".rotations")



def _keyed_sha256(key: bytes) -> Any:
    """HMAC-SHA256 keyed with `key`: OpenSSL's object itself where there is one (its copy,
    update and hexdigest are C calls; `hmac.HMAC` wraps each in Python), else `hmac`'s."""
    try:
        from _hashlib import hmac_new
    except ImportError:
        return hmac.new(key, digestmod="sha256")
    return hmac_new(key, digestmod="sha256")

class AuditKey:
    """The private key a writer signs its anchors with."""

    def __init__(self, path: Path, private: Ed25519PrivateKey) -> None:
        self.path = path
        self._private = private
        self.public = private.public_key().public_bytes_raw().hex()
        # The head between two signatures carries a MAC made with a key derived from this one:
        # cheap enough for every append, and checkable by the next broker that holds the key.
        self._mac_key = hashlib.sha256(_MAC_DOMAIN + private.private_bytes_raw()).digest()
        self._mac = _keyed_sha256(self._mac_key)  # keyed once, copied per MAC

    @classmethod
    def open(cls, path: str | Path | None = None, *, create: bool = True) -> AuditKey:
        """The key at `path` (see `key_path`), made first if there is none and `create`."""
        where = key_path(path)
        try:
            return cls(where, _load_private(where))
        except FileNotFoundError:
            if not create:
                raise NotFound(f"no audit key at {where}") from None
        return cls(where, _make(where))

    def sign(self, message: bytes) -> str:
        return self._private.sign(message).hex()

    def mac(self, seq: int, digest: str) -> str:
        mac = self._mac.copy()
        mac.update(f"{seq} {digest}".encode())
        return mac.hexdigest()

    def walk_mac(self, data: bytes) -> str:
        """The MAC of a walk `libos ps` keeps (`broker.store.walk_memory`)."""
        key = hashlib.sha256(_WALK_DOMAIN + self._private.private_bytes_raw()).digest()
        return hmac.new(key, data, "sha256").hexdigest()

    def endorsements(self) -> list[Endorsement]:
        """The rotations recorded beside this key (each checked where it is used)."""
        try:
            text = _read_owned(rotations_path(self.path))
        except FileNotFoundError:
            return []
        found = []
        for line in text.decode(errors="replace").splitlines():
            fields = line.split()
            if len(fields) == 3:
                found.append(Endorsement(*fields))
        return found


def rotate(path: str | Path | None = None) -> Endorsement:
    """Replace the key at `path` with a new one that it endorses. The old private key is
    gone afterwards; its endorsement of the new one is kept in `<key>.rotations`, and each
    store records it in its chain when a broker next opens it."""
    old = AuditKey.open(path, create=False)
    new = Ed25519PrivateKey.generate()
    public = new.public_key().public_bytes_raw().hex()
    endorsement = Endorsement(old.public, public, old.sign(
        signing.rotation_message(old.public, public)))
    fd = os.open(rotations_path(old.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, f"{endorsement.previous} {endorsement.key} {endorsement.signature}\n"
                 .encode())
    finally:
        os.close(fd)
    temporary = old.path.with_name(old.path.name + f".new-{secrets.token_hex(6)}")
    _write_private(temporary, new)
    os.replace(temporary, old.path)
    _write_public(old.path, new)
    return endorsement


def read_public(path: str | Path) -> str:
    """A public key given to a verifier: a PEM file (`<key>.pub`) or its hex, as hex."""
    try:  # (not blocking: a FIFO nobody writes would wait forever)
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InvalidArgument(f"the public key {path} is not a regular file")
            data = f.read(MAX_KEY_FILE)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the public key {path}: {exc.strerror}") from None
    text = data.strip().decode(errors="replace")
    if signing.is_hex(text.lower(), signing.KEY_HEX):
        return text.lower()
    try:
        key = _openssl.keys.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):  # (a curve OpenSSL has that cryptography not)
        raise InvalidArgument(f"{path} holds no Ed25519 public key (PEM or hex)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument(f"{path} holds no Ed25519 public key (PEM or hex)")
    return key.public_bytes_raw().hex()


def trusted_dir(path: str | Path | None = None) -> Path:
    """Where the public keys this user trusts besides its own lie: `trusted/` beside the
    key (`~/.config/libos/trusted/`), one `<fingerprint>.pub` each."""
    return key_path(path).parent / "trusted"


def trust(public: str | Path, path: str | Path | None = None) -> tuple[str, Path]:
    """Trust the public key in file `public` (PEM or hex): a copy (hex) goes into
    `trusted_dir`, owner-only. Returns the key (hex) and where it now lies."""
    key = read_public(public)
    where = trusted_dir(path)
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = where / f"{signing.fingerprint(key)}.pub"
    temporary = target.with_name(target.name + f".new-{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    os.replace(temporary, target)
    return key, target


def untrust(fingerprint: str, path: str | Path | None = None) -> Path:
    """Trust no longer the key `trust` put in `trusted_dir` under this fingerprint."""
    target = trusted_dir(path) / f"{fingerprint}.pub"
    if not signing.is_hex(fingerprint, 16) or not target.exists():
        raise NotFound(f"no trusted key {fingerprint[:32]!r} in {trusted_dir(path)}")
    target.unlink()
    return target


def trusted_keys(path: str | Path | None = None) -> dict[str, Path]:
    """The keys (hex → file) in `trusted_dir`. The directory and each file must be this
    user's alone to write: one that others may write could hold anyone's key, so it is
    refused (`InvalidArgument`), never read."""
    where = trusted_dir(path)
    if not where.is_dir():
        return {}
    _owned_by_user(where)
    found = {}
    for entry in sorted(where.glob("*.pub")):
        _owned_by_user(entry)
        found[read_public(entry)] = entry
    return found


def _owned_by_user(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise InvalidArgument(
            f"{path} may be written by others (mode {st.st_mode & 0o777:03o}, owner "
            f"{st.st_uid}, or a link): trusted keys must be this user's alone to write")


def own_public(path: str | Path | None = None) -> str | None:
    """The public half of the key a broker here would sign with, if there is one (never made
    here): from `<key>.pub`, or from the key itself."""
    where = key_path(path)
    if public_path(where).exists():
        return read_public(public_path(where))
    try:
        return AuditKey.open(where, create=False).public
    except NotFound:
        return None


# -- files ---------------------------------------------------------------------------------


def _read_owned(path: Path) -> bytes:
    """A file only its owner (this user) can read or write: anything else is refused. (Not
    blocking, as `read_public`: a FIFO put in its place is refused, not waited on for ever.)"""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise InvalidArgument(
                f"{path} is readable or writable by others (mode {st.st_mode & 0o777:03o}, "
                f"owner {st.st_uid}): it must be this user's alone (chmod 600)")
        return os.read(fd, MAX_KEY_FILE)
    finally:
        os.close(fd)


def _load_private(path: Path) -> Ed25519PrivateKey:
    data = _read_owned(path)
    try:
        key = _openssl.keys.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidArgument(f"{path} holds no unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} holds a private key that is not Ed25519")
    return key


def _make(path: Path) -> Ed25519PrivateKey:
    """A new key at `path`, written whole under another name and linked into place, so two
    brokers making it at once end up with one key (the loser loads the winner's)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    temporary = path.with_name(path.name + f".new-{secrets.token_hex(6)}")
    _write_private(temporary, key)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return _load_private(path)
    finally:
        os.unlink(temporary)
    _write_public(path, key)
    return key


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    temporary = public_path(path).with_name(public_path(path).name + f".new-{secrets.token_hex(6)}")
    temporary.write_bytes(pem)
    os.replace(temporary, public_path(path))


def writer_key(given: AuditKey | str | Path | None) -> AuditKey:
    """The key a writing store signs with: the one given, the one at a given path, or the
    default (see `key_path`), made on first use."""
    return given if isinstance(given, AuditKey) else AuditKey.open(given)


def user_key(what: str) -> AuditKey:
    """This user's audit key, which signs `what` (a control request, an answer through the
    store: a broker applies only one signed by a key it trusts); none: a typed error."""
    try:
        return AuditKey.open(create=False)
    except NotFound:
        raise NotFound(f"no audit key at {key_path()}: {what} is signed with it (a broker"
                       f" makes it when it first opens a store; or set ${KEY_ENV})") from None
