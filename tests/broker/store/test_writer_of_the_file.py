"""One writer per database file, whatever name it is opened by (red team 12 #9): a second
lock, keyed by the file's device and inode in the key's directory, beside the lock file kept
beside each name. And the lock file a broker from before 58429d5 kept at a linked name, taken
over at the first open after the upgrade (red team 12 #11)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from broker.errors import Conflict
from broker.store.audit import AuditRecord
from broker.store.keys import key_path
from broker.store.sqlite import SQLiteStore
from broker.store.verify import audit_problems


def _append(store: SQLiteStore) -> None:
    store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))


def made_with_a_record(store: Path) -> Path:
    """A store at `store` (its directory made too) holding one record, closed."""
    store.parent.mkdir()
    made = SQLiteStore(store)
    _append(made)
    made.close()
    return store


def _linked_pair(tmp_path: Path) -> tuple[Path, Path]:
    store = made_with_a_record(tmp_path / "store" / "libos.db")
    backup = tmp_path / "backup" / "libos.db"
    backup.parent.mkdir()
    os.link(store, backup)
    return store, backup


def test_the_second_writer_by_a_hard_link_is_refused_before_it_touches_the_file(
        tmp_path: Path) -> None:
    """The attack (red team 12 #9): refused, typed, no WAL made beside the link's name; the
    running writer goes on appending, its chain whole; a reader by the link still reads."""
    store, backup = _linked_pair(tmp_path)
    running = SQLiteStore(store)
    try:
        with pytest.raises(Conflict, match="hard link"):
            SQLiteStore(backup)
        assert not Path(f"{backup}-wal").exists()
        reader = SQLiteStore(backup, writer=False)
        try:
            assert len(list(reader.audit_records())) == 1
        finally:
            reader.close()
        _append(running)
        _, problems = audit_problems(running)
        assert problems == []
        st = os.stat(store)
        taken = key_path().parent / "writers" / f"{st.st_dev}-{st.st_ino}"
        assert (os.stat(taken).st_mode & 0o777, os.stat(taken.parent).st_mode & 0o777) == (
            0o600, 0o700)  # (owner-only, as the key's directory)
    finally:
        running.close()


def test_a_hard_linked_name_opens_once_the_other_writer_is_gone(tmp_path: Path) -> None:
    """The neighbour: a backup name of the user's opens when nobody writes the file; a writer
    dropped unclosed lets go of the file's lock too (reopened by its own name: a dropped
    store's checkpointer is not waited for, and SQLite in one process over two names of one
    file while it ends is not what this asks)."""
    store, backup = _linked_pair(tmp_path)
    SQLiteStore(store).close()
    by_backup = SQLiteStore(backup)
    _append(by_backup)
    by_backup.close()
    dropped = SQLiteStore(store)
    del dropped
    gc.collect()
    SQLiteStore(store).close()


def _as_before_58429d5(link: Path, appends: int) -> None:
    """A store written through `link` by a broker from before 58429d5: its lock file (and the
    anchor's memory) at the link's place."""
    import broker.store.sqlite as sqlite_module
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_module, "resolved", lambda path: path)
        patch.setattr(sqlite_module, "check_opened", lambda db, path: None)
        store = SQLiteStore(link)
        for _ in range(appends):
            _append(store)
        store.close()


def _linked_store(tmp_path: Path) -> tuple[Path, Path]:
    real = tmp_path / "data" / "libos.db"
    real.parent.mkdir()
    link = tmp_path / "home" / "libos.db"
    link.parent.mkdir()
    link.symlink_to(real)
    return real, link


def test_the_upgrade_moves_the_lock_file_beside_the_file(tmp_path: Path) -> None:
    """Red team 12 #11: the old lock file is moved (not copied: nothing reads it there) and
    its anchor vouches for the chain at the first open after the upgrade and the next."""
    real, link = _linked_store(tmp_path)
    _as_before_58429d5(link, 3)
    signed = Path(f"{link}.lock").read_bytes()
    for _ in range(2):
        store = SQLiteStore(link)
        try:
            assert not Path(f"{link}.lock").exists()
            _, problems = audit_problems(store)
            assert problems == []
            _append(store)
        finally:
            store.close()
    assert Path(f"{real}.lock").read_bytes() != signed  # (signed again since)


def test_an_old_lock_file_another_key_signed_is_left_where_it_is(tmp_path: Path) -> None:
    """A lock file at the link's place that this key did not sign is not taken over (it
    vouches for nothing this broker can check): left alone, the missing anchor named as
    before."""
    _, link = _linked_store(tmp_path)
    _as_before_58429d5(link, 3)
    other_key = tmp_path / "other.key"
    SQLiteStore(tmp_path / "other.db", audit_key=other_key).close()
    Path(f"{link}.lock").write_bytes(Path(f"{tmp_path / 'other.db'}.lock").read_bytes())
    kept = Path(f"{link}.lock").read_bytes()
    store = SQLiteStore(link)
    try:
        _, problems = audit_problems(store)
    finally:
        store.close()
    assert Path(f"{link}.lock").read_bytes() == kept
    assert problems


def test_an_old_lock_file_held_by_a_broker_from_before_is_a_conflict(tmp_path: Path) -> None:
    """A broker from before 58429d5 still writing through the link holds the old lock file:
    the upgraded one is refused (Conflict), not a second writer beside it."""
    import fcntl
    _, link = _linked_store(tmp_path)
    _as_before_58429d5(link, 1)
    fd = os.open(f"{link}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Conflict):
            SQLiteStore(link)
    finally:
        os.close(fd)
    SQLiteStore(link).close()
