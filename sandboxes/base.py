"""The one interface every sandbox kind implements.

A sandbox driver moves frames and enforces limits by killing what it runs. It never imports
a provider, the store or the capability layer: all authority stays on the other side of
`SyscallHost`, which the kernel implements for one invocation of one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol, Self

from broker.protocol import unframable


@dataclass(frozen=True, slots=True)
class ToolCode:
    """A tool as a sandbox sees it: its source, content-addressed."""

    name: str
    lang: str
    source: bytes
    hash: str


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Limits for one call; exceeding any ends the call with `LimitExceeded`."""

    deadline: float = 30.0            # seconds of wall time
    max_syscalls: int = 10_000        # attempts, refused ones too, with the tools it calls
    max_output_bytes: int = 1 << 20   # log text (a line costs at least 64 B) and result
    memory_mb: int = 256              # heap (Deno/Pyodide) or linear memory (wasm)
    fuel: int = 2_000_000_000         # wasm only


class SyscallHost(Protocol):
    """The kernel's side of one invocation. Identity is fixed by the object, never by what
    the sandbox writes: a host belongs to one process, one tool and one invocation."""

    pid: int
    invocation_id: int
    tool: str
    # Which authority a sandbox process may serve for its whole life (the process and the
    # chain of manifests narrowing the call, nested callers' included).
    authority: str

    async def syscall(self, name: str, args: Any) -> Any:
        """Run a syscall (may wait: approvals, sleeps, children); raises a `LibosError`."""
        ...

    def syscall_now(self, name: str, args: Any) -> Any:
        """Run a syscall that does not block, synchronously, from any thread. Raises
        `WouldBlock` for one that must wait: call `syscall` from trio instead."""
        ...

    def is_blocking(self, name: str) -> bool: ...

    def log(self, level: str, text: str) -> None: ...


class WouldBlock(Exception):
    """`syscall_now` was asked for a syscall that has to wait."""


class Sandbox(Protocol):
    """One sandbox kind (deno, wasm, pyodide): it runs tools of the languages it lists."""

    kind: str
    langs: tuple[str, ...]

    async def prepare(self, name: str, lang: str, source: bytes, *,
                      authority: str | None = None, memory_mb: int | None = None) -> bytes:
        """Check (parse, type-check, validate, compile) a tool at registration. Returns the
        source to store (e.g. wat → wasm bytes); raises `InvalidArgument` if it is not a
        valid tool. `authority` (with the `memory_mb` of its calls) is what the first call
        of a process's tool will be bound to: a driver whose sandboxes serve one authority
        may check the tool in the sandbox that will run that call (None: a tool of an
        image, which belongs to no process yet)."""
        ...

    async def call(self, code: ToolCode, args: Any, host: SyscallHost,
                   limits: CallLimits) -> Any:
        """Run one call. Errors are `LibosError`s; a dead sandbox is `SandboxCrashed`, and
        only the call in flight fails."""
        ...

    def forget_checked(self, name: str, code_hash: str, authority: str) -> None:
        """A tool `prepare` checked for `authority` was not registered after all (the commit
        of its registration failed): nothing it left loaded is kept for a first call."""
        ...

    def unsendable(self, answer: Any) -> str | None:
        """Why a syscall's answer could not reach a tool running here (its channel's bound
        would refuse it), or None. A syscall whose answer is taken (a message, an event, a
        child's end) asks before its outcome is recorded (`broker/syscalls/proc.py`)."""
        ...

    async def aclose(self) -> None: ...

    @property
    def entered(self) -> bool:
        """Opened by its caller (`async with`): the caller closes it, not a kernel."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...


class SandboxDriver:
    """The one lifecycle of every driver: opened one of two ways, closed the same way.

    * `async with Kind(...) as sandbox:` opens it in the calling task (`open`: a driver that
      runs processes starts its service there) and, on leaving, closes it (`aclose`), then
      exits whatever `open` entered.
    * Handed unentered to `Kernel.open(sandboxes=[...])`, a driver opens itself on first use
      (a driver with a service starts it as a trio system task), and the kernel closes it
      with `aclose` when the kernel closes. A driver handed in entered is the caller's: the
      kernel leaves it open (`entered`), for the caller to close or hand to another kernel.

    `aclose` may be called from any task, more than once; a call or `prepare` after it is
    `SandboxCrashed`. A subclass overrides `open` (if it runs anything) and `aclose`.
    """

    _entered: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.open(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._entered = stack
        return self

    @property
    def entered(self) -> bool:
        return self._entered is not None

    async def __aexit__(self, *exc: object) -> None:
        stack, self._entered = self._entered, None
        try:
            await self.aclose()
        finally:
            if stack is not None:
                await stack.aclose()

    async def open(self, stack: AsyncExitStack) -> None:
        """Start what the driver runs, in the calling task; anything that must be exited in
        this task again (a nursery) goes on `stack`. The default: nothing to start."""

    async def aclose(self) -> None:
        raise NotImplementedError

    def forget_checked(self, name: str, code_hash: str, authority: str) -> None:
        """`Sandbox.forget_checked`. The default: a driver that keeps nothing of a check."""

    def unsendable(self, answer: Any) -> str | None:
        """`Sandbox.unsendable`. The default: a frame of the wire protocol (Deno, Pyodide)."""
        return unframable(answer)


async def close_all(sandboxes: Iterable[Sandbox]) -> None:
    """Close every one, even after one failed to (the first failure is raised after). Those
    that can begin closing without waiting (`DenoSandbox.close_soon`) are all told first, so
    they close together, not one after another."""
    sandboxes = list(sandboxes)
    for sandbox in sandboxes:
        close_soon = getattr(sandbox, "close_soon", None)
        if close_soon is not None:
            close_soon()
    failed: BaseException | None = None
    for sandbox in sandboxes:
        try:
            await sandbox.aclose()
        except BaseException as exc:
            failed = failed or exc
    if failed is not None:
        raise failed
