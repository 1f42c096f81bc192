"""Registration in the Deno driver (`DenoSandbox.prepare`): where a tool is checked.

A process's tool is checked in the sandbox that will run its first call (`check_in_spare`):
an idle sandbox of that call's authority, else a spare bound to it for good, imports the tool
(a `check` frame) and keeps it loaded; a check that fails in any way kills that sandbox. (The
Pyodide driver checks there too: it compiles the tool, never runs it.) An image's tool (no
process yet) goes to the registration checker, a process of its own; one that runs the
tool's code (`checker_per_check`) checks one tool and is killed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from broker.errors import InvalidArgument, LibosError, LimitExceeded, NotCapable, SandboxCrashed
from sandboxes.base import CallLimits
from sandboxes.testing import NullHost

if TYPE_CHECKING:
    from sandboxes.deno_process import DenoProcess

log = logging.getLogger("libos.sandboxes.deno")

# The checker's host: it serves no process, so it has no syscalls and drops logs.
CHECKER_HOST = NullHost(refuse=NotCapable("the registration checker has no syscalls"), pid=0,
                        invocation_id=0, tool="check", authority="<checker>")


class Registration:
    """`prepare` and the registration checker: a part of `DenoSandbox` (whose processes,
    pool and `_run` it uses), in a module of its own."""

    async def prepare(self, name: str, lang: str, source: bytes, *,
                      authority: str | None = None, memory_mb: int | None = None) -> bytes:
        if lang not in self.langs:
            raise InvalidArgument(f"the Deno sandbox runs {self.langs}, not {lang!r}")
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"tool {name}: source is not UTF-8") from None
        if authority is not None and self.check_in_spare:
            await self._check_in_spare(name, lang, source, text, authority,
                                       memory_mb or self.memory_mb)
            return source
        limits = CallLimits(deadline=self.check_timeout + 2.0, max_syscalls=0,
                            max_output_bytes=0, memory_mb=self.memory_mb)
        async with self._check_lock:
            for attempt in (1, 2):
                checker = self._checker
                if checker is None or not checker.idle_ok():
                    checker = self._checker = await self._start(self.memory_mb, self.check_entry)
                try:
                    await self._run(checker, name, lang, "sha256:-", text, {
                        "timeout_ms": int(self.check_timeout * 1000)}, CHECKER_HOST, limits,
                        "check")
                    break
                except InvalidArgument:
                    raise
                except LibosError as exc:
                    # A checker can die of an earlier check (a Worker that ran out of memory
                    # as it was terminated): a death is only this tool's fault twice running.
                    if attempt == 1 and checker.dead:
                        continue
                    raise InvalidArgument(
                        f"tool {name} could not be checked: {exc.message}") from None
                finally:
                    if self.checker_per_check:
                        self._retire_checker(checker)
        return source

    async def _check_in_spare(self, name: str, lang: str, source: bytes, text: str,
                              authority: str, memory_mb: int) -> None:
        """Check a tool in the sandbox that will run it: an idle one of its authority, else a
        spare (waiting for one being started rather than starting another), bound to that
        authority for good. It imports the tool (its top-level code runs there, as it would
        before the first call) and finds `run`; the tool then stays loaded for the first call.
        A check that fails in any way kills that sandbox: what a refused module left in it
        serves nobody."""
        if self._nursery is None:
            await self._service()
        digest = hashlib.sha256(source).hexdigest()  # the kernel's content address of it
        key = self.bound_key(authority, digest)  # what its calls' pool_key will be
        sb = self.pool.take(key, memory_mb)
        if sb is None and memory_mb == self.memory_mb:
            sb = await self.pool.take_starting(key, self.startup_timeout)
        if sb is None:
            sb = await self._start_for(key, memory_mb)
        limits = CallLimits(deadline=self.check_timeout, max_syscalls=0, max_output_bytes=0,
                            memory_mb=memory_mb)
        try:
            await self._run(sb, name, lang, digest, text, None, CHECKER_HOST, limits,
                            "spare-check")
        except InvalidArgument:
            raise
        except LimitExceeded as exc:
            if "deadline" in exc.message:
                raise InvalidArgument(
                    f"tool {name}: the module did not finish loading within "
                    f"{int(self.check_timeout * 1000)} ms") from None
            raise InvalidArgument(f"tool {name} could not be checked: {exc.message}") from None
        except LibosError as exc:
            raise InvalidArgument(f"tool {name} could not be checked: {exc.message}") from None

    def forget_checked(self, name: str, code_hash: str, authority: str) -> None:
        """The sandbox a check left the tool loaded in, idle and bound to the authority of
        the tool's first call, which will never come (its registration was taken back): it is
        killed, as a failed check's is, so what the module left serves nobody."""
        self.pool.kill_idle(self.bound_key(authority, code_hash),
                            lambda sb: sb.loaded.get(name) == code_hash,
                            SandboxCrashed(f"tool {name} was not registered after all"))

    def _retire_checker(self, checker: DenoProcess) -> None:
        """Kill a checker that has checked a tool, and start the next one meanwhile: the
        tool's top-level code ran in a Worker of it, and a Worker that spins (a loop at the
        top level, or one a timer starts as the check answers) outlives `terminate()`, holding
        a CPU for as long as the checker lives."""
        checker.kill(SandboxCrashed("a checker checks one tool"))
        if self._checker is checker:
            self._checker = None
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(self._next_checker)

    async def _next_checker(self) -> None:
        async with self._check_lock:
            if self._checker is None or self._checker.dead:
                try:
                    self._checker = await self._start(self.memory_mb, self.check_entry)
                except LibosError as exc:  # the next check starts one itself
                    log.warning("could not start a checker: %s", exc.message)
