"""The subprocess shell provider: runs one checked command, confined and bounded.

* argv only (a shell string reaches here as `sh -c STRING`, and only because a capability
  named that form); the program is found on a fixed PATH, never the caller's;
* a scrubbed environment: the variables the checked resource names (it names every one the
  call gives: `broker.caps.shell_env`), then PATH, LANG, TMPDIR (a private temp dir) and
  HOME (a fresh empty directory in it), set after them so that the caller cannot change them;
* its own session and process group: time and output caps, and cancellation, kill the whole
  group (SIGKILL to the group, then reap);
* rlimits (CPU, address space, file size, open files, no core dumps), no-new-privileges, and
  Landlock where the kernel has it (writable: the process's fs root and the temp dir; read and
  execute: the system directories; no TCP). Where Landlock is missing that is logged once.
  They are set by a shim exec'd before the command (`confine_exec`), not in the forked child:
  no Python runs between fork and exec in the broker (whose threads' locks the child has).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from broker.caps import Proof, require_proof
from broker.caps.shell_env import check_env, command_resource
from broker.errors import InvalidArgument, LimitExceeded, NotFound
from broker.providers import confine_exec, landlock

log = logging.getLogger("libos.shell")

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
LANG = "C.UTF-8"


@dataclass(frozen=True, slots=True)
class ShellLimits:
    timeout: float = 30.0  # default per call; a call may ask for up to max_timeout
    max_timeout: float = 600.0
    max_output: int = 1 << 20  # stdout + stderr bytes
    address_space: int = 4 << 30
    file_size: int = 256 << 20
    open_files: int = 256


@dataclass(frozen=True, slots=True)
class ShellRequest:
    argv: tuple[str, ...]
    cwd: str  # a host directory inside the process's fs root (/proc/self/fd/N: see shell.run)
    writable: tuple[str, ...]  # host directories the command may change
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    timeout: float | None = None
    max_output: int | None = None


class ShellProvider(Protocol):
    async def run(self, proof: Proof, request: ShellRequest) -> dict[str, Any]: ...


_landlock_logged = False


def _landlock_state() -> bool:
    global _landlock_logged
    reason = landlock.unavailable_reason()
    if reason is not None and not _landlock_logged:
        _landlock_logged = True
        log.warning("Landlock is not available (%s): shell commands run with rlimits and "
                    "no-new-privileges only, without OS filesystem confinement", reason)
    return reason is None


class SubprocessShell:
    def __init__(self, limits: ShellLimits | None = None, *, landlock: bool = True) -> None:
        self.limits = limits or ShellLimits()
        self.landlock = landlock and _landlock_state()

    def program(self, name: str) -> str:
        if "/" in name:
            if not os.path.isabs(name):
                raise InvalidArgument("shell.run: a program is a name on PATH or absolute")
            found = name if os.access(name, os.X_OK) and os.path.isfile(name) else None
        else:
            found = shutil.which(name, path=SAFE_PATH)
        if found is None:
            raise NotFound(f"shell.run: no program {name[:128]!r}")
        return found

    def _confined(self, command: list[str], env_fd: int, timeout: float,
                  ruleset: int | None) -> list[str]:
        """`command` run through the exec'd shim that confines it (`confine_exec`): no
        Python runs between fork and exec in the broker's (threaded) process."""
        limits = self.limits
        return confine_exec.arguments(int(timeout) + 2, limits.address_space, limits.file_size,
                                      limits.open_files, ruleset, env_fd, command)

    async def run(self, proof: Proof, request: ShellRequest) -> dict[str, Any]:
        checked = require_proof(proof, Proof)
        if checked.kind != "shell" or checked.resource != command_resource(
                check_env(request.env), request.argv):
            raise TypeError("the proof does not name this command and environment")
        timeout = request.timeout or self.limits.timeout
        if timeout > self.limits.max_timeout:
            raise InvalidArgument(f"shell.run: timeout over {self.limits.max_timeout} s")
        cap = min(request.max_output or self.limits.max_output, self.limits.max_output)
        program = self.program(request.argv[0])
        if not os.path.isdir(request.cwd):
            raise NotFound("shell.run: the working directory does not exist")
        tmp = tempfile.mkdtemp(prefix="libos-shell-")
        # HOME is fresh and empty: programs read start-up files there (~/.gitconfig,
        # ~/.ssh/config), and a process that may write its fs root could plant them.
        home = os.path.join(tmp, "home")
        os.mkdir(home, 0o700)
        # The broker's own variables come last: the caller's values for them never win.
        env = {**request.env, "PATH": SAFE_PATH, "HOME": home, "LANG": LANG, "TMPDIR": tmp}
        ruleset = landlock.build_ruleset((*request.writable, tmp)) if self.landlock else None
        try:
            return await self._spawn(program, request, env, timeout, cap, ruleset)
        finally:
            if ruleset is not None:
                os.close(ruleset)
            shutil.rmtree(tmp, ignore_errors=True)

    async def _spawn(self, program: str, request: ShellRequest, env: dict[str, str],
                     timeout: float, cap: int, ruleset: int | None) -> dict[str, Any]:
        env_fd = confine_exec.environment_fd(env)
        try:
            proc = await trio.lowlevel.open_process(
                self._confined([program, *request.argv[1:]], env_fd, timeout, ruleset),
                stdin=-1, stdout=-1, stderr=-1, cwd=request.cwd, env={}, start_new_session=True,
                close_fds=True, pass_fds=(env_fd,) if ruleset is None else (env_fd, ruleset))
        finally:
            os.close(env_fd)
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        over = False

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        async def pump(name: str, stream: Any) -> None:
            nonlocal over
            async for chunk in stream:
                buf = out[name]
                buf += chunk
                if len(out["stdout"]) + len(out["stderr"]) > cap:
                    over = True
                    kill_group()
                    return

        async def feed() -> None:
            try:
                if request.stdin:
                    await proc.stdin.send_all(request.stdin)
                await proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        timed_out = False
        try:
            with trio.move_on_after(timeout) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed)
                    nursery.start_soon(pump, "stdout", proc.stdout)
                    nursery.start_soon(pump, "stderr", proc.stderr)
                await proc.wait()
            timed_out = scope.cancelled_caught
        finally:
            # Whatever happened (timeout, output cap, cancellation of the caller), nothing
            # of the command outlives the call: the whole group is killed and reaped.
            with trio.CancelScope(shield=True):
                kill_group()
                await proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()
        if timed_out:
            raise LimitExceeded(f"shell.run: still running after {timeout} s; killed")
        if over:
            raise LimitExceeded(f"shell.run: more than {cap} bytes of output; killed")
        return {"exit_code": proc.returncode,
                "stdout": out["stdout"].decode(errors="replace"),
                "stderr": out["stderr"].decode(errors="replace")}
