"""`libos demo`: the whole story, deterministic and in seconds.

Act 1. A `lead` agent registers three tools while it runs — TypeScript (Deno), WebAssembly
(Wasmtime) and, where Pyodide is installed, Python — and uses them. A tool that tries to
escape its sandbox gets nothing. The lead spawns an `analyst` with a narrower grant: it is
denied a secret, asks a person before writing a report, gets a one-shot approval (from the
demo's scripted human), and is refused when it tries to reuse it.

Act 2. A `night-shift` agent works through a job in a broker process of its own; that broker
is killed with SIGKILL while the agent waits for a signal.

Act 3. A new broker opens the store: the agent resumes from its last checkpoint, nothing it
did is repeated, it finishes. Then labels: a `courier` reads the secret through a capability
that labels it `secret`; copying it to `/exports` is refused (that capability bounds the
labels flowing in), and a digest for `/reviewed` goes out only because a person approves that
one call. The audit chain verifies.

Pyodide's start from its snapshot is the longest wait: `libos demo` starts that sandbox before
the CLI imports anything heavy (`broker/cli_prestart.py`), and its driver adopts it here. This
module starts the rest: act 2's broker process first (forked, see `NightShift`), then the other
sandboxes' spares, so they start while the story itself (`broker/demo_story.py`, which imports
the kernel) is imported and act 1 begins. Acts 2 and 3 use no sandbox: the sandboxes are
closed (their processes killed and reaped) in the background while they run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path

import trio
from rich.console import Console

from broker.cli_errors import flush_std_streams
from broker.errors import Conflict, InvalidArgument
from sandboxes.available import open_sandboxes
from sandboxes.base import Sandbox
from sandboxes.prestart import Prestarted


class NightShift:
    """Act 2's broker: a child forked from this process before its trio run starts, so it has
    what the CLI imported (trio, rich, the store, a third of the kernel) and the interpreter
    itself for nothing: a second interpreter that imported the kernel cost the demo about as
    much CPU as Pyodide's start. It imports the rest at a lower priority (act 1, and the
    Pyodide sandbox's start, come first when they compete for the CPU), then waits to be told
    to go (`go`): it opens the store (which act 1's broker holds) then. Killing it is act 2."""

    def __init__(self, db: Path, spare: Prestarted | None = None) -> None:
        go_read, self._go = os.pipe()
        self._said, said_write = os.pipe()
        flush_std_streams()
        self.pid = os.fork()  # the process has one thread here: trio has not started
        if self.pid == 0:  # the child: it never returns
            code = 70
            try:
                os.close(self._go)
                os.close(self._said)
                for fd in spare.pipes if spare is not None else ():  # the parent's sandbox
                    os.close(fd)
                code = _night_shift(db, go_read, said_write)
            except BaseException as exc:  # said in a line (the demo fails with a typed error)
                print(f"libos demo: act 2's broker failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        os.close(go_read)
        os.close(said_write)
        self.returncode: int | None = None

    def go(self) -> str:
        """Tell it to go; what it says back (`WAITING <pid>`, or "" if it died)."""
        os.write(self._go, b"go\n")
        with os.fdopen(os.dup(self._said), "r") as said:
            return said.readline()

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        """Its end: killed if it still runs (the demo failed before act 2), reaped."""
        self.kill()
        self.wait()
        for fd in (self._go, self._said):
            with contextlib.suppress(OSError):
                os.close(fd)


def _night_shift(db: Path, go_fd: int, said_fd: int) -> int:
    """The forked broker's life (see `NightShift`)."""
    os.nice(10)
    # Ctrl-C in a terminal reaches the whole process group: the demo's own process stops,
    # and kills this one (`close`); a traceback from here too would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from broker.demo_story import POLL
    from broker.kernel import Kernel

    with os.fdopen(go_fd, "r") as go:
        if go.readline() != "go\n":
            return 0  # the demo ended first

    async def main() -> None:
        async with Kernel.open(db) as kernel:
            pid = kernel.spawn("night-shift", caps=["fs:/shift/**:write",
                                                    "proc:event:dawn:message"])
            while kernel.process(pid).state.value != "waiting":
                await trio.sleep(POLL)
            os.write(said_fd, f"WAITING {pid}\n".encode())
            await trio.sleep_forever()

    trio.run(main)
    return 0


def command(db: str | None, out: Console, python_spare: Prestarted | None = None) -> bool:
    """`libos demo [--db PATH]`: the demo against a fresh SQLite file at `db`, or in a
    temporary directory. `python_spare` is closed here whatever happens (if no driver took it).
    Returns whether the audit verified."""
    try:
        if db is not None:
            from broker.store.location import is_database

            if is_database(db):
                raise InvalidArgument("the demo makes a fresh SQLite file: give --db a path")
            if os.path.lexists(db):  # a dangling link too: the store is never made through it
                raise Conflict(f"{db} exists; the demo wants a fresh store")
            return demo(Path(db), out, python_spare)
        with tempfile.TemporaryDirectory(prefix="libos-demo-") as tmp:
            return demo(Path(tmp) / "demo.db", out, python_spare)
    finally:
        if python_spare is not None:
            python_spare.close()


def demo(db: Path, out: Console, python_spare: Prestarted | None = None) -> bool:
    """Run the demo against a fresh store at `db`. Returns whether the audit verified.
    `python_spare`: its Pyodide sandbox, if the command started it ahead (`cli_prestart`;
    `command` closes it if no driver took it)."""
    night_shift = NightShift(db, python_spare)  # before trio: fork a process of one thread
    try:
        return trio.run(run_demo, db, out, night_shift, python_spare)
    finally:
        night_shift.close()


async def run_demo(db: Path, out: Console, night_shift: NightShift,
                   python_spare: Prestarted | None = None) -> bool:
    async with trio.open_nursery() as nursery:
        sandboxes, close = await nursery.start(_sandboxes, _compiled_modules_home(db.parent),
                                               python_spare)
        from broker import demo_story as story  # the kernel, while the spares start

        t = story.Transcript(out)
        try:
            await story.act_one(db, sandboxes, t)
        finally:
            # Acts 2 and 3 use no sandbox: their processes are killed and reaped (which
            # takes a while) in the background meanwhile; the nursery waits for that at its
            # end.
            close.set()
        # Act 2 in a thread: it waits on the pipe of act 2's broker.
        pid = await trio.to_thread.run_sync(story.act_two, db, night_shift, t)
        return await story.act_three(db, pid, t)


def _compiled_modules_home(fallback: Path) -> Path:
    """Where the demo's WASM sandbox keeps the modules it compiles: in the user's cache
    directory (beside the Deno cache templates), so a demo after the first loads the guest
    library and its tool compiled, where a fresh temporary directory made every demo compile
    them again (about 50 ms of CPU in act 1, more in the background) and fsync their
    artefacts. `fallback` (the demo's own directory) where that cannot be made. An artefact
    is trusted only from a directory this user alone may write (`sandboxes.wasm_cache`)."""
    from sandboxes.deno_cache import cache_root

    home = cache_root().parent / "demo"
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return fallback
    return home


async def _sandboxes(work: Path, python_spare: Prestarted | None,
                     task_status: trio.TaskStatus[tuple[list[Sandbox], trio.Event]]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """One spare of each kind, started now, and none after: the lead checks and runs its
    tools in them; a replacement would only compete with the story for the CPU. Closed when
    the event it hands back is set."""
    async with open_sandboxes(work, refill=False, python_spare=python_spare) as sandboxes:
        close = trio.Event()
        task_status.started((sandboxes, close))
        await close.wait()
