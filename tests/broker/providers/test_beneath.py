"""openat2 beneath a directory, attacked directly: each flag the rooted provider relies on is
shown to refuse what it must (a symlink that stays inside the root too, where
RESOLVE_BENEATH alone would follow it; a magic link; a way out), and the provider keeps its
component walk where the kernel has no openat2."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.providers import beneath
from broker.providers.fs import LocalFs
from tests.broker.providers.one_descriptor_left import one_descriptor_left

pytestmark = pytest.mark.skipif(not beneath.usable(), reason="openat2 is not available here")

FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    base = tmp_path / "root"
    (base / "dir/sub").mkdir(parents=True)
    (base / "dir/f.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("OUTSIDE")
    os.symlink("f.txt", base / "dir/link_file")  # stays inside the root
    os.symlink("dir", base / "link_dir")  # stays inside the root
    os.symlink(str(tmp_path / "outside.txt"), base / "abs_out")
    os.symlink("/proc/self/root", base / "proc_root")
    fd = os.open(base, DIR)
    try:
        yield fd, base
    finally:
        os.close(fd)


def _refused(fd: int, parts: tuple[str, ...], flags: int = FILE) -> int:
    with pytest.raises(OSError) as refused:
        os.close(beneath.open_beneath(fd, parts, flags))
    return refused.value.errno


def test_a_plain_path_opens_and_no_parts_is_the_directory_itself(root: tuple[int, Path]) -> None:
    fd, base = root
    opened = beneath.open_beneath(fd, ("dir", "f.txt"), FILE)
    try:
        assert os.read(opened, 100) == b"inside"
    finally:
        os.close(opened)
    opened = beneath.open_beneath(fd, (), DIR)
    try:
        assert os.fstat(opened).st_ino == os.stat(base).st_ino
    finally:
        os.close(opened)


def test_a_symlink_anywhere_is_refused_even_one_that_stays_inside(root: tuple[int, Path]) -> None:
    fd, _ = root
    assert _refused(fd, ("dir", "link_file")) == errno.ELOOP  # last component
    assert _refused(fd, ("link_dir", "f.txt")) == errno.ELOOP  # a directory on the way
    assert _refused(fd, ("abs_out",)) == errno.ELOOP
    assert _refused(fd, ("proc_root", "etc", "passwd")) == errno.ELOOP
    assert _refused(fd, ("link_dir", "sub"), DIR) == errno.ELOOP
    # The kernel checks O_DIRECTORY first on a link in last place: the provider turns this
    # ENOTDIR into ELOOP, as its walk does (tested through the kernel).
    assert _refused(fd, ("link_dir",), DIR) == errno.ENOTDIR


def test_magic_links_are_refused(root: tuple[int, Path]) -> None:
    """/proc/self/root and /proc/self/fd/N lead anywhere without being symlinks to a path."""
    fd, _ = root
    proc = os.open(f"/proc/{os.getpid()}", DIR)
    try:
        assert _refused(proc, ("root", "etc", "passwd")) == errno.ELOOP
        assert _refused(proc, ("fd", str(fd), "dir", "f.txt")) == errno.ELOOP
        assert _refused(proc, ("cwd",)) == errno.ELOOP
        assert _refused(proc, ("exe",)) == errno.ELOOP
    finally:
        os.close(proc)


def test_no_way_out_of_the_directory(root: tuple[int, Path]) -> None:
    fd, base = root
    assert _refused(fd, ("..", "outside.txt")) == errno.EXDEV
    assert _refused(fd, ("dir", "..", "..", "outside.txt")) == errno.EXDEV
    assert _refused(fd, ("", str(base.parent / "outside.txt").lstrip("/"))) == errno.EXDEV
    assert _refused(fd, ("dir", "\x00", "f.txt")) == errno.EINVAL  # never a shorter path


def test_the_path_kept_from_the_last_open_is_only_that_tuples(root: tuple[int, Path]) -> None:
    """The encoded path is reused for the very tuple it was made of, never for another one
    (an equal one, or one a NUL makes refused, is encoded and looked at afresh)."""
    fd, base = root
    (base / "dir/g.txt").write_text("other")
    for parts, text in ((("dir", "f.txt"), b"inside"), (("dir", "g.txt"), b"other"),
                        (("dir", "f.txt"), b"inside"), (tuple(["dir", "g.txt"]), b"other")):
        for _ in range(2):  # (the second time from what the first one kept)
            opened = beneath.open_beneath(fd, parts, FILE)
            try:
                assert os.read(opened, 100) == text
            finally:
                os.close(opened)
    opened = beneath.open_beneath(fd, (), DIR)  # no parts after some: the directory itself
    try:
        assert stat.S_ISDIR(os.fstat(opened).st_mode)
    finally:
        os.close(opened)
    assert _refused(fd, ("dir", "f.txt\x00")) == errno.EINVAL
    assert _refused(fd, ("dir", "f.txt\x00")) == errno.EINVAL


def test_a_fifo_opens_at_once(root: tuple[int, Path]) -> None:
    """O_NONBLOCK goes through: a FIFO nobody writes does not hold the opener."""
    fd, base = root
    os.mkfifo(base / "dir/fifo")
    opened = beneath.open_beneath(fd, ("dir", "fifo"), FILE)
    try:
        assert stat.S_ISFIFO(os.fstat(opened).st_mode)
    finally:
        os.close(opened)


def test_without_openat2_the_provider_walks(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that answers ENOSYS (an unknown syscall number stands in for an old kernel or
    a seccomp filter) is found out once, and the provider keeps its component walk."""
    monkeypatch.setattr(beneath, "_number", 100_000)
    monkeypatch.setattr(beneath, "_usable", None)
    monkeypatch.setattr(beneath, "_syscall", None)
    assert beneath.usable() is False
    fs = LocalFs(tmp_path / "root")
    assert fs._root_fd is None
    assert LocalFs(tmp_path / "root2")._root_fd is None
    monkeypatch.undo()
    assert beneath.usable() is True and LocalFs(tmp_path / "root3")._root_fd is not None


def test_the_kept_root_descriptor_never_reaches_a_child(tmp_path: Path) -> None:
    """The provider holds a descriptor of its root for its whole life: a child process (a
    sandbox, a shell command) that inherited it would hold the whole tree without a check."""
    fs = LocalFs(tmp_path / "root")
    assert fs._root_fd is not None and not os.get_inheritable(fs._root_fd)
    listing = subprocess.run(["ls", "-l", "/proc/self/fd/"], close_fds=False, check=True,
                             capture_output=True, text=True).stdout
    assert fs.root not in listing and "/proc/" in listing  # (ls's own view of its fds)


def test_the_open_how_lives_through_the_call_when_another_thread_stored_its_own(
        root: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads (two kernels in one process) opening with new flags at once each make a
    `struct open_how`; the one whose struct lost the cache entry must still hold it through
    its call: the kernel reads it by address, and freed memory may hold any resolve flags
    (none at all: no RESOLVE_BENEATH)."""
    freed: list[bool] = []
    seen_freed: list[bool] = []

    class Tracked(beneath._OpenHow):
        def __del__(self) -> None:
            freed.append(True)

    class Raced(dict):  # another thread's struct lands in the cache at the same moment
        def _theirs(self, key: tuple[int, int]) -> tuple[beneath._OpenHow, object]:
            return beneath.how_entry(beneath._OpenHow(key[0], key[1], beneath.STRICT))

        def __setitem__(self, key: tuple[int, int], value: object) -> None:
            super().__setitem__(key, self._theirs(key))

        def setdefault(self, key: tuple[int, int], value: object = None) -> object:
            super().__setitem__(key, self._theirs(key))
            return value

    real = beneath._syscall

    def observed(*args: object) -> int:
        seen_freed.append(bool(freed))
        return real(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(beneath, "_OpenHow", Tracked)
    monkeypatch.setattr(beneath, "_hows", Raced())
    monkeypatch.setattr(beneath, "_syscall", observed)
    fd, _ = root
    os.close(beneath.open_beneath(fd, ("dir", "f.txt"), FILE))
    assert seen_freed == [False], "the struct was freed before the kernel read it"
    assert _refused(fd, ("..", "outside.txt")) == errno.EXDEV  # and the flags still hold


PROBE_OUT_OF_DESCRIPTORS = one_descriptor_left(
    "from broker.providers import beneath\nfrom broker.providers.fs import LocalFs",
    "beneath.usable()",
    '"after": beneath.usable(), "root_fd": LocalFs(os.environ["ROOT"])._root_fd is not None')


def test_running_out_of_descriptors_during_the_probe_is_not_a_no_for_good(
        tmp_path: Path) -> None:
    """openat2 failing with EMFILE says nothing of the host: the probe answers "not now",
    and once descriptors are back it finds openat2 and the next provider uses it (not the
    walk for the life of the process)."""
    done = subprocess.run([sys.executable, "-c", PROBE_OUT_OF_DESCRIPTORS], check=True,
                          capture_output=True, text=True, cwd=Path(__file__).parents[3],
                          env={**os.environ, "ROOT": str(tmp_path / "root")})
    assert json.loads(done.stdout) == {"first": False, "after": True, "root_fd": True}
