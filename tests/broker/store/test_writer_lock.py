"""The writer's lock (`broker.store.writer_lock`) is free the moment a kernel has closed, or
died in-process, even while the broker is starting child processes: a child between its fork
and its exec holds a copy of the lock's descriptor. (Before the explicit unlock, a reopen
right after a close was refused while sandboxes started: 44 of 300 reopens here.) Real
forks, real Deno, real SQLite."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import trio

from broker import AgentImage, Conflict, Kernel
from broker.store import SQLiteStore
from broker.store.probe import LOCK_SUFFIX
from broker.store.writer_lock import take_writer_lock
from sandboxes.deno_launch import find_deno
from tests.broker.kernel.crashing import Crash, crash_after


@contextmanager
def child_between_fork_and_exec() -> Iterator[None]:
    """A child forked now that stays before its exec (in its `preexec_fn`) until the block
    ends: it holds a copy of every descriptor the broker has open, close-on-exec or not."""
    read_end, write_end = os.pipe()
    forked_r, forked_w = os.pipe()

    def hold() -> None:  # (in the child)
        os.write(forked_w, b"x")
        os.read(read_end, 1)

    def start() -> None:  # (Popen returns once the child has exec'd: in a thread, as trio's)
        subprocess.Popen(["true"], preexec_fn=hold).wait()

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert os.read(forked_r, 1) == b"x"  # forked, not yet exec'd
        yield
    finally:
        os.write(write_end, b"x")
        starter.join()
        for fd in (read_end, write_end, forked_r, forked_w):
            os.close(fd)


def lock_is_free(db: Path) -> bool:
    fd = take_writer_lock(str(db) + LOCK_SUFFIX)
    if fd is None:
        return False
    os.close(fd)
    return True


def test_a_closed_store_lets_go_while_a_child_holds_its_descriptor(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    store = SQLiteStore(db)
    with child_between_fork_and_exec():
        store.close()
        assert lock_is_free(db)
        SQLiteStore(db).close()  # reopened at once, the child still not exec'd


async def test_a_kernel_closed_or_crashed_lets_go_while_a_child_holds_its_descriptor(
        tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    with ExitStack() as held:
        async with Kernel.open(db) as k:
            await k.register_image(AgentImage("host"))
            held.enter_context(child_between_fork_and_exec())
        assert lock_is_free(db)
    undo: Callable[[], None] = lambda: None  # noqa: E731
    with ExitStack() as held:
        try:
            with pytest.raises(BaseException) as caught:
                async with Kernel.open(db) as k:
                    k.spawn("host")
                    held.enter_context(child_between_fork_and_exec())
                    # The broker dies at its next write, its store's close cut off too.
                    undo = crash_after("transaction", lambda *_, **__: True, before=True)
                    k.spawn("host")
        finally:
            undo()
        assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
            else isinstance(caught.value, Crash)
        assert lock_is_free(db)
        async with Kernel.open(db) as k:  # reopened at once: it finds what was written
            assert k.live == [1]


async def _spawn_deno_until(stop: Callable[[], bool]) -> None:
    """Start short Deno processes as the driver starts its spares (trio forks in a worker
    thread), one after another, until told to stop."""
    while not stop():
        await trio.run_process([find_deno(), "--version"], stdout=subprocess.DEVNULL)


async def test_reopened_at_once_while_deno_processes_start(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    done = False
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_spawn_deno_until, lambda: done)
        try:
            for _ in range(60):
                async with Kernel.open(db):
                    await trio.sleep(0)
        finally:
            done = True


def test_a_forked_childs_close_leaves_the_writers_lock_held(tmp_path: Path) -> None:
    """A child forked by the embedding program with the store open (a worker forked, a `with`
    that unwinds in the child) and closing its copy: its `LOCK_UN` let go of the lock for
    every copy, the parent's own too, and a second broker opened the store while the first
    still wrote (two writers of one audit chain). Only the process that took the lock lets
    go of it; a child's close closes its own descriptor alone (as before the `LOCK_UN`)."""
    db = tmp_path / "libos.db"
    store = SQLiteStore(db)
    pid = os.fork()
    if pid == 0:  # the child: close its copy, and go
        code = 1
        try:
            store.close()
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    try:
        assert not lock_is_free(db)
        with pytest.raises(Conflict, match="another broker"):
            SQLiteStore(db)
        store.set_meta("still", "the writer")  # the first broker writes on
        assert store.meta("still") == "the writer"
    finally:
        store.close()
    assert lock_is_free(db)
