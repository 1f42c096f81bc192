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

Pyodide's start from its snapshot is the longest wait: `libos demo` starts that sandbox, and
its TypeScript one, before the CLI imports anything heavy (`broker/cli_prestart.py`), and their
drivers adopt them here. They start while the CLI, then the story itself
(`broker/demo_story.py`, which imports the kernel), are imported; act 2's broker process is
forked after that (see `NightShift`), then the WASM sandbox opens and act 1 begins. Acts 2 and
3 use no sandbox: the sandboxes are closed (their processes killed and reaped) in the
background while they run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio
from rich.console import Console

from broker import cli_prestart
from broker.cli_errors import flush_std_streams
from broker.command_trio import run_command
from broker.errors import Conflict, InvalidArgument
from sandboxes.available import open_sandboxes
from sandboxes.base import Sandbox
from sandboxes.prestart import Spares


class NightShift:
    """Act 2's broker: a child forked from this process before its trio run starts, once the
    story (and so the kernel and the store) is imported, so it has those and the interpreter
    itself for nothing: a second interpreter that imported the kernel cost the demo about as
    much CPU as Pyodide's start, and a child forked before the kernel was imported still
    imported it again (about 0.1 s of CPU, at a lower priority). It waits to be told to go
    (`go`), using no CPU, then opens the store (which act 1's broker holds until then): the
    demo waits for what it does after that, so it runs at the demo's own priority. Killing it
    is act 2."""

    def __init__(self, db: Path, spares: Spares | None = None) -> None:
        go_read, self._go = os.pipe()
        self._said, said_write = os.pipe()
        flush_std_streams()
        self.pid = os.fork()  # the process has one thread here: trio has not started
        if self.pid == 0:  # the child: it never returns
            code = 70
            try:
                os.close(self._go)
                os.close(self._said)
                for spare in spares.started() if spares is not None else ():
                    for fd in spare.pipes:  # the parent's sandboxes'
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
        self._told = False

    def start(self) -> None:
        """Tell it to go (once): the store is free."""
        if not self._told:
            self._told = True
            os.write(self._go, b"go\n")

    def go(self) -> str:
        """Tell it to go if not yet; what it says back (`WAITING <pid>`, or "" if it died)."""
        self.start()
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

    run_command(main)
    return 0


def command(db: str | None, out: Console, spares: Spares | None = None) -> bool:
    """`libos demo [--db PATH]`: the demo against a fresh SQLite file at `db`, or in a
    temporary directory. `spares` are closed here whatever happens (those no driver took).
    Returns whether the audit verified."""
    try:
        if db is not None:
            from broker.store.location import is_database

            if is_database(db):
                raise InvalidArgument("the demo makes a fresh SQLite file: give --db a path")
            if os.path.lexists(db):  # a dangling link too: the store is never made through it
                raise Conflict(f"{db} exists; the demo wants a fresh store")
            return demo(Path(db), out, spares)
        with tempfile.TemporaryDirectory(prefix="libos-demo-") as tmp:
            return demo(Path(tmp) / "demo.db", out, spares)
    finally:
        if spares is not None:
            spares.close()


def demo(db: Path, out: Console, spares: Spares | None = None) -> bool:
    """Run the demo against a fresh store at `db`. Returns whether the audit verified.
    `spares`: its sandboxes, if the command started them ahead (`cli_prestart`; `command`
    closes those no driver took)."""
    import_story(spares)
    night_shift = NightShift(db, spares)  # before trio: fork a process of one thread
    try:
        return run_command(run_demo, db, out, night_shift, spares)
    finally:
        night_shift.close()


def import_story(spares: Spares | None) -> None:
    """The story (the kernel: see NightShift) imported while the spares start, and with
    spares started ahead, the WASM driver too (else `open_sandboxes` imports it once it has
    spawned them); then the collector is on again (`cli_prestart.imports_done`)."""
    import broker.demo_story  # noqa: F401

    if spares is not None and spares.started():
        import sandboxes.wasm  # noqa: F401
    cli_prestart.imports_done()


async def run_demo(db: Path, out: Console, night_shift: NightShift,
                   spares: Spares | None = None) -> bool:
    from broker import demo_story as story  # (imported by `demo`)

    async with trio.open_nursery() as nursery:
        sandboxes, close = await nursery.start(_sandboxes, _compiled_modules_home(db.parent),
                                               spares or Spares())
        t = story.Transcript(out)
        try:
            await story.act_one(db, sandboxes, t,
                                closed=partial(story.free_the_store, db, night_shift))
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


async def _sandboxes(work: Path, spares: Spares,
                     task_status: trio.TaskStatus[tuple[list[Sandbox], trio.Event]]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """One spare of each kind, started now, and none after: the lead checks and runs its
    tools in them; a replacement would only compete with the story for the CPU. Closed when
    the event it hands back is set."""
    async with open_sandboxes(work, refill=False, python_spare=spares.python,
                              ts_spare=spares.ts) as sandboxes:
        close = trio.Event()
        task_status.started((sandboxes, close))
        await close.wait()
