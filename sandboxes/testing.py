"""The null host: a `SyscallHost` of no process, for driving a sandbox without a kernel.

Tests and benchmarks use it to call a driver directly; the Deno driver's registration checker
uses it with `refuse`, since a check serves no process and may make no syscall. It holds no
authority: its identity is fixed when it is made, and every syscall either answers the same
constant or is refused.
"""

from __future__ import annotations

from typing import Any

from broker.errors import LibosError


class NullHost:
    """Every syscall answers `answer` at once (none waits), or raises `refuse` when one is
    given; logs are dropped."""

    def __init__(self, answer: Any = None, *, refuse: LibosError | None = None,
                 pid: int = 1, invocation_id: int = 1, tool: str = "t",
                 authority: str = "test/-") -> None:
        self.answer = answer
        self.refuse = refuse
        self.pid = pid
        self.invocation_id = invocation_id
        self.tool = tool
        self.authority = authority

    async def syscall(self, name: str, args: Any) -> Any:
        return self.syscall_now(name, args)

    def syscall_now(self, name: str, args: Any) -> Any:
        if self.refuse is not None:
            raise type(self.refuse)(self.refuse.message)
        return self.answer

    def is_blocking(self, name: str) -> bool:
        return False

    def log(self, level: str, text: str) -> None:
        pass
