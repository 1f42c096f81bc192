"""Attacks on how the rooted provider opens a checked path, played through the kernel with
both of its ways (one openat2 from the root, and the component walk): files that are not
files (a FIFO nobody writes, a device), planted or swapped in after the check, and a thread
flipping the path to a link or another file while reads run. Each is a typed error with its
audit record, never a hang and never the other file's content; a neighbour still works."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.caps import FileId, VirtualPath
from broker.errors import Conflict, InvalidArgument, LibosError
from broker.providers import procfd
from broker.providers.fs import LocalFs
from tests.broker.syscalls.path_attacks import HOST, NEIGHBOUR, SECRET, RacyFs, Runner, plant

pytestmark = pytest.mark.usefixtures("fs_walk")


@contextmanager
def no_hang(seconds: int = 10) -> Iterator[None]:
    """A call that blocks (an open of a FIFO waiting for a writer) fails the test instead."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError("the call hung")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _refused(runner: Runner, op: str, args: dict[str, Any], expect: type[LibosError]) -> None:
    before = runner.kernel.store.head_seq
    with no_hang(), pytest.raises(expect) as refused:
        runner.call("main", op, args)
    assert runner._audited(before, op, refused.value.code), refused.value
    assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR


async def test_the_kernel_opens_paths_the_way_the_fixture_chose(tmp_path: Path,
                                                                 fs_walk: str) -> None:
    async with Kernel.open(tmp_path / "libos.db") as kernel:
        assert (kernel.fs._root_fd is not None) == (fs_walk == "openat2")  # type: ignore


async def test_a_fifo_in_scope_is_refused_at_once(tmp_path: Path) -> None:
    tree = plant(tmp_path)
    os.mkfifo(tree.fs_root / "work/pub/fifo")  # nobody ever writes or reads it
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        for args in ({}, {"binary": True}, {"offset": 1, "length": 3}):
            _refused(runner, "fs.read", {"path": "fifo", **args}, InvalidArgument)
        for args in ({"data": "x"}, {"data": "x", "append": True}):
            _refused(runner, "fs.write", {"path": "fifo", **args}, InvalidArgument)
        _refused(runner, "fs.list", {"path": "fifo"}, InvalidArgument)
        with no_hang():
            assert runner.call("main", "fs.stat", {"path": "fifo"})["type"] == "other"


@contextmanager
def other_end_waiting(fifo: Path, flags: int) -> Iterator[threading.Event]:
    """A thread opening the other end of `fifo` (`flags`, blocking): its open returns, and
    the event is set, only once someone opens this end, however briefly. Released at the
    end by the test's own open of this end."""
    opened = threading.Event()

    def wait() -> None:
        os.close(os.open(fifo, flags))
        opened.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        if not opened.is_set():
            this_end = os.O_RDONLY if flags == os.O_WRONLY else os.O_WRONLY
            os.close(os.open(fifo, this_end | os.O_NONBLOCK))
        thread.join(10)


@pytest.mark.parametrize("reopen", ["procfs", "by name"])
async def test_a_fifo_is_refused_without_being_opened(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      reopen: str) -> None:
    """Opening a FIFO or a device can have effects (a writer woken, a tape rewound, a
    terminal taken): the provider looks at what a name is (O_PATH, which opens nothing)
    before it opens it. A writer (a reader, for writes) blocked on the FIFO's other end
    is never woken by a refused read, write or list, each refused with its record."""
    if reopen == "by name":
        monkeypatch.setattr(procfd, "fd_dir", lambda: None)
    elif procfd.fd_dir() is None:
        pytest.skip("no procfs to reopen through here")
    tree = plant(tmp_path)
    fifo = tree.fs_root / "work/pub/fifo"
    os.mkfifo(fifo)
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        with other_end_waiting(fifo, os.O_WRONLY) as writer_woken:
            for op, args in (("fs.read", {}), ("fs.read", {"binary": True}),
                             ("fs.read", {"offset": 1, "length": 3}), ("fs.list", {})):
                _refused(runner, op, {"path": "fifo", **args}, InvalidArgument)
            assert not writer_woken.wait(1.0), "a refused read opened the FIFO"
        with other_end_waiting(fifo, os.O_RDONLY) as reader_woken:
            for args in ({"data": "x"}, {"data": "x", "append": True}):
                _refused(runner, "fs.write", {"path": "fifo", **args}, InvalidArgument)
            assert not reader_woken.wait(1.0), "a refused write opened the FIFO"


class LateFs(RacyFs):
    """The attacker's move played after the whole check (resolution and identification),
    right before the effect."""

    def locate(self, path: VirtualPath) -> tuple[VirtualPath, FileId | None]:
        resolved, found = LocalFs.locate(self, path)
        if found is not None:  # (identified in the same look: that was the check's last)
            self._play()
        return resolved, found

    def identify(self, path: VirtualPath) -> FileId | None:
        found = LocalFs.identify(self, path)
        self._play()
        return found

    def _play(self) -> None:
        move, self.move = self.move, None
        if move is not None:
            move()


async def test_a_fifo_swapped_in_after_the_check_is_a_conflict_not_a_hang(
        tmp_path: Path) -> None:
    tree = plant(tmp_path)
    target = tree.fs_root / "work/pub/dir/f.txt"
    fs = LateFs(tree.fs_root)

    def swap() -> None:
        os.rename(target, target.with_name("f.aside"))
        os.mkfifo(target)

    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        # Opened O_PATH (which opens nothing) and compared with the file checked: another
        # inode, for a read or a write alike.
        for op, args, expect in (("fs.read", {}, Conflict),
                                 ("fs.read", {"binary": True}, Conflict),
                                 ("fs.write", {"data": "x"}, Conflict),
                                 ("fs.write", {"data": "x", "append": True}, Conflict)):
            fs.move = swap
            _refused(runner, op, {"path": "dir/f.txt", **args}, expect)
            assert stat.S_ISFIFO(os.lstat(target).st_mode)
            os.unlink(target)
            os.rename(target.with_name("f.aside"), target)
        assert target.read_text() == "f"


async def test_a_device_file_in_scope_is_refused(tmp_path: Path) -> None:
    tree = plant(tmp_path)
    try:  # the same device as /dev/zero: a read would never end
        os.mknod(tree.fs_root / "work/pub/zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("cannot make a device node here")
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        _refused(runner, "fs.read", {"path": "zero", "binary": True}, InvalidArgument)
        _refused(runner, "fs.write", {"path": "zero", "data": "x"}, InvalidArgument)


def _flip_dir_to(target: str) -> Callable[[Path], Callable[[], None]]:
    def make(pub: Path) -> Callable[[], None]:
        race_dir = pub / "race/dir"
        aside = race_dir.with_name("dir.real")

        def flip() -> None:
            os.rename(race_dir, aside)
            os.symlink(target.format(outside=pub.parents[2] / "outside"), race_dir)
            time.sleep(0.0002)
            os.unlink(race_dir)
            os.rename(aside, race_dir)
        return flip
    return make


def _flip_file_to(how: str) -> Callable[[Path], Callable[[], None]]:
    def make(pub: Path) -> Callable[[], None]:
        name = pub / "race/dir/f.txt"
        aside = name.with_name("f.real")
        outside = pub.parents[2] / "outside/host.txt"

        def flip() -> None:
            os.rename(name, aside)
            if how == "symlink to outside":
                os.symlink(outside, name)
            elif how == "symlink to secret":
                os.symlink("../../../secret/key", name)
            else:  # another name for the secret file: no symlink anywhere
                os.link(pub.parent / "secret/key", name)
            time.sleep(0.0002)
            os.unlink(name)
            os.rename(aside, name)
        return flip
    return make


FLIPS = {
    "dir to an absolute link out of the tree": _flip_dir_to("{outside}/dir"),
    "dir to a link to the secret dir": _flip_dir_to("../../../secret"),
    "dir to /proc/self/root": _flip_dir_to("/proc/self/root"),
    "file to a link out of the tree": _flip_file_to("symlink to outside"),
    "file to a link to the secret": _flip_file_to("symlink to secret"),
    "file to a hard link of the secret": _flip_file_to("hardlink to secret"),
}


@pytest.mark.parametrize("flip", sorted(FLIPS))
async def test_a_path_flipping_under_concurrent_reads_never_leaks(tmp_path: Path,
                                                                  flip: str) -> None:
    """A real race: a thread flips the path as fast as it can while the process reads it.
    Every read is the process's own file or a typed error with its record; never another
    file's content."""
    tree = plant(tmp_path)
    (tree.outside / "dir/f.txt").write_bytes(HOST)
    (tree.fs_root / "work/secret/f.txt").write_bytes(SECRET)
    flipper_step = FLIPS[flip](tree.fs_root / "work/pub")
    stop = threading.Event()

    def flipper() -> None:  # (a pause between flips gives the reads a window each way)
        while not stop.is_set():
            flipper_step()
            stop.wait(0.0005)

    seen: Counter[str] = Counter()
    fs = RacyFs(tree.fs_root)  # (no move armed: the thread is the attacker)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        thread = threading.Thread(target=flipper, daemon=True)
        thread.start()
        try:
            for _ in range(400):
                before = kernel.store.head_seq
                try:
                    with no_hang():
                        got = runner.call("main", "fs.read", {"path": "race/dir/f.txt",
                                                              "binary": True})
                except LibosError as exc:
                    seen[type(exc).__name__] += 1
                    assert runner._audited(before, "fs.read", exc.code), exc
                else:
                    assert got == b"race", got
                    seen["read"] += 1
        finally:
            stop.set()
            thread.join()
        assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
    assert sum(seen.values()) == 400 and seen["read"] > 0, seen
    print(f"\n{flip}: {dict(seen)}")
    assert (tree.fs_root / "work/secret/key").read_bytes() == SECRET


HOLD_LEASE = """
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)  # told of a break, it keeps the lease anyway
kind = fcntl.F_RDLCK if sys.argv[2] == "read" else fcntl.F_WRLCK
fd = os.open(sys.argv[1], os.O_RDONLY if kind == fcntl.F_RDLCK else os.O_RDWR)
fcntl.fcntl(fd, 1024, kind)  # F_SETLEASE
print("held", flush=True)
sys.stdin.read()  # until the test is done
"""


@contextmanager
def leased(path: Path, kind: str) -> Iterator[None]:
    """Another process of the host (a shell tool, a file server) holds a lease on `path`: an
    open that conflicts with it waits until the holder lets go, or for the host's whole
    lease-break-time (45 s by default) if it never does, unless it is non-blocking."""
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(path), kind],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            if holder.stdout.readline().strip() != "held":  # type: ignore[union-attr]
                pytest.skip("leases are not available here")
            yield
        finally:
            holder.kill()  # its descriptor closes: a blocked open goes on


@pytest.mark.parametrize("reopen", ["procfs", "by name"])
@pytest.mark.parametrize("op", ["fs.read", "fs.write", "fs.write append"])
async def test_a_leased_file_is_a_conflict_not_a_hang(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      reopen: str, op: str) -> None:
    """The open that follows the O_PATH look must stay non-blocking, as the open by name
    was: a read lease (a write lease, for a read) held elsewhere would otherwise hold the
    broker's loop, every process's calls with it, for up to the host's lease-break-time.
    It is a Conflict with its record, at once; a neighbour still works."""
    if reopen == "by name":
        monkeypatch.setattr(procfd, "fd_dir", lambda: None)
    elif procfd.fd_dir() is None:
        pytest.skip("no procfs to reopen through here")
    tree = plant(tmp_path)
    target = tree.fs_root / "work/pub/leased.txt"
    target.write_text("leased")
    name, _, mode = op.partition(" ")
    args: dict[str, Any] = {"path": "leased.txt"}
    if name == "fs.write":
        args |= {"data": "x", "append": mode == "append"}
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        with leased(target, "read" if name == "fs.write" else "write"):
            _refused(runner, name, args, Conflict)
        assert runner.call("main", name, args) in ("leased", 1)  # once let go: as before


async def test_a_reopen_that_lands_on_another_file_is_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Defence in depth: /proc/self/fd is checked once, when it is pinned. Were its
    descriptor ever closed and the number reused (a double close anywhere in the broker's
    process), the reopen of "<n>" under it would follow whatever that name is there (no
    O_NOFOLLOW, no RESOLVE_BENEATH: it must follow the magic link). So what the reopen gives
    is compared with the file looked at, as the reopen by name is: a Conflict with its
    record, the secret neither read nor written; a neighbour works again once it is back."""
    tree = plant(tmp_path)
    secret = tree.fs_root / "work/secret/key"
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for n in range(4096):  # every number the O_PATH descriptor may get
        os.symlink(secret, decoy / str(n))
    where = os.open(decoy, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fs = RacyFs(tree.fs_root)
    try:
        async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
            runner = await Runner.start(kernel, tree, fs)
            with monkeypatch.context() as m:
                m.setattr(procfd, "fd_dir", lambda: where)
                for op, args in (("fs.read", {"path": "ok.txt"}),
                                 ("fs.write", {"path": "ok.txt", "data": "x"}),
                                 ("fs.write", {"path": "ok.txt", "data": "x", "append": True})):
                    before = kernel.store.head_seq
                    with no_hang(), pytest.raises(Conflict) as refused:
                        runner.call("main", op, args)
                    assert runner._audited(before, op, refused.value.code), refused.value
            assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
    finally:
        os.close(where)
    assert secret.read_bytes() == SECRET
