"""Tool invocations: the host a running tool talks to.

A tool is a libc-like wrapper: whatever language it is written in, every effect it has goes
through `KernelHost`, which is bound to one process and one invocation and sends each syscall
to the dispatcher. Builtin tools (`builtin_tools`) are Python functions over the same host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.kernel.builtin_tools import BUILTINS  # noqa: F401  (the tool table uses it)
from broker.kernel.invocation import Invocation
from broker.syscalls import TABLE
from sandboxes.base import ToolCode

if TYPE_CHECKING:
    from broker.kernel.kernel import Kernel
    from broker.kernel.process import AgentProcess


class KernelHost:
    """`SyscallHost` for one invocation of one process: identity is this object, never what
    the tool writes."""

    def __init__(self, kernel: Kernel, proc: AgentProcess, inv: Invocation,
                 authority: str) -> None:
        self._kernel = kernel
        self._proc = proc
        self._inv = inv
        self.pid = proc.pid
        self.invocation_id = inv.id
        self.tool = inv.tool
        self.authority = authority

    async def syscall(self, name: str, args: Any) -> Any:
        return await self._kernel.dispatcher.run(self._proc, self._inv, name, args)

    def syscall_now(self, name: str, args: Any) -> Any:
        return self._kernel.dispatcher.run_now(self._proc, self._inv, name, args)

    def is_blocking(self, name: str) -> bool:
        spec = TABLE.get(name)
        return spec is None or spec.blocking

    def log(self, level: str, text: str) -> None:
        self._kernel.tool_log(self._proc, self._inv, level, text)


def tool_code(name: str, spec: dict[str, Any], source: bytes) -> ToolCode:
    return ToolCode(name=name, lang=spec["lang"], source=source, hash=spec["hash"])
