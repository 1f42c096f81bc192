"""A Deno sandbox process started before trio and the broker are imported, for a driver to
adopt as its first spare.

`libos demo`'s longest wait is its Pyodide sandbox's start (restoring the snapshot: about
0.3 s of CPU); the imports of the command before the driver could start it take about as
long. Started first (`broker/cli_prestart.py`), the process restores its snapshot on the
other core while they run; so does the demo's TypeScript spare, which the kernel's import
(before act 2's broker is forked, `broker/demo.py`) would otherwise hold back. The driver
adopts it (`DenoSandbox(prestarted=...)`) only if it is the process it would have started
itself: the same command line and environment (`process_env`: the emit cache off or on as
the driver's), in the service home made here (private directories, the DENO_DIR seeded from
the same template), with the same memory cap. Until a driver binds it like any spare it runs
the libos runtime alone: no tool, no authority.

Whoever holds one that no driver adopted closes it (`close`: killed, reaped, its home
removed); if this process dies first, the sandbox's stdin closes and it exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

from sandboxes import deno_cache
from sandboxes.deno_launch import ServiceHome, limit_process, make_home, process_env

if TYPE_CHECKING:
    import trio


class Prestarted:
    """A started sandbox process (ours: the parent's ends of its three pipes) and its home.
    (Plain classes here, not dataclasses: see `ServiceHome`.)"""

    __slots__ = ("argv", "env", "home", "pipes", "popen", "seeded", "state")

    def __init__(self, home: ServiceHome, argv: list[str], seeded: bool,
                 popen: subprocess.Popen[bytes], pipes: tuple[int, int, int],
                 env: dict[str, str]) -> None:
        self.home = home
        self.argv = argv
        self.seeded = seeded  # its DENO_DIR holds the runtime's compiled files (the template's)
        self.popen = popen
        self.pipes = pipes  # stdin (we write), stdout, stderr (we read)
        self.env = env  # the process's environment (`process_env` of its home's)
        self.state = "started"  # then "adopted" or "closed"

    def adopt(self) -> trio.Process | None:
        """The process as trio's `open_process` would have returned it; the caller owns it.
        None if trio would not make one of it (the process killed, our ends closed, the
        home kept): the driver then starts its own."""
        import trio

        if self.state != "started":
            return None
        streams: list[trio.lowlevel.FdStream] = []
        try:
            streams.extend(trio.lowlevel.FdStream(fd) for fd in self.pipes)
            # trio makes a Process only from a Popen it spawned itself (`open_process` is this
            # call after `subprocess.Popen` in a thread); its constructor is not public.
            process: trio.Process = trio.Process._create(self.popen, *streams)  # type: ignore[attr-defined]
        except Exception:  # (trio's private constructor changed, say)
            for stream in streams:
                stream.close()  # its fd, closed once: not again below
            self._end(self.pipes[len(streams):])
            return None
        self.state = "adopted"
        return process

    def kill(self) -> None:
        """Kill and reap the process (not adopted), close our ends; the home stays."""
        if self.state == "started":
            self._end(self.pipes)

    def _end(self, fds: tuple[int, ...]) -> None:
        self.state = "closed"
        with contextlib.suppress(OSError):
            self.popen.kill()
        self.popen.wait()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Its end when no driver took it: killed, reaped, its home removed."""
        if self.state == "started":
            self.kill()
            shutil.rmtree(self.home.tmp, ignore_errors=True)


def start(argv: list[str], data_mb: int, *, emit_cache: bool = True) -> Prestarted:
    """Start `argv` as a Deno driver's service would (`DenoSandbox._start`), in a new home
    seeded from the runtime cache template of that command line (`emit_cache`: as its
    driver's, `process_env`). Raises OSError."""
    home = make_home()
    env = process_env(home.env, emit_cache)
    try:
        seeded = deno_cache.seed(home.deno_dir, deno_cache.template_dir(argv))
        child_in, our_in = os.pipe()
        our_out, child_out = os.pipe()
        our_err, child_err = os.pipe()
        try:
            popen = subprocess.Popen(argv, stdin=child_in, stdout=child_out, stderr=child_err,
                                     cwd=home.cwd, env=env, start_new_session=True,
                                     restore_signals=False)  # (as `DenoSandbox._start`)
        except OSError:
            for fd in (our_in, our_out, our_err):
                os.close(fd)
            raise
        finally:
            for fd in (child_in, child_out, child_err):
                os.close(fd)
    except BaseException:
        shutil.rmtree(home.tmp, ignore_errors=True)
        raise
    limit_process(popen.pid, data_mb)
    return Prestarted(home, argv, seeded, popen, (our_in, our_out, our_err), env)



class Spares:
    """The sandboxes a command started ahead, by kind, each for its driver to adopt."""

    __slots__ = ("python", "ts")

    def __init__(self, python: Prestarted | None = None, ts: Prestarted | None = None) -> None:
        self.python = python  # Pyodide
        self.ts = ts  # the TypeScript runtime

    def started(self) -> list[Prestarted]:
        return [s for s in (self.python, self.ts) if s is not None]

    def close(self) -> None:
        """Those no driver took: killed, reaped, their homes removed."""
        for spare in self.started():
            spare.close()
