"""Tool invocations: the host a running tool talks to, and the builtin (in-process) runner.

A tool is a libc-like wrapper: whatever language it is written in, every effect it has goes
through `KernelHost`, which is bound to one process and one invocation and sends each syscall
to the dispatcher. Builtin tools are Python functions over the same host.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.caps import CapSpec
from broker.errors import InvalidArgument, LimitExceeded
from broker.syscalls import TABLE
from sandboxes.base import CallLimits, ToolCode

if TYPE_CHECKING:
    from broker.kernel.kernel import Kernel
    from broker.kernel.process import AgentProcess

@dataclass(slots=True)
class Invocation:
    """One run of one tool. Its id is the audit seq of the `tool.call` intent that started
    it: durable and unique, so a run can be found (and replayed) from the audit."""

    id: int
    pid: int
    tool: str
    manifests: tuple[tuple[CapSpec, ...], ...]
    depth: int
    limits: CallLimits
    syscalls: int = 0
    output_bytes: int = 0
    caller: Invocation | None = None
    started: float = field(default_factory=time.monotonic)  # its deadline counts from here
    # Past its syscall cap: every further attempt in its call tree is refused, unrecorded.
    exhausted: bool = False

    @classmethod
    def start(cls, id_: int, pid: int, tool: str, manifest: tuple[CapSpec, ...] | None,
              caller: Invocation | None, limits: CallLimits) -> Invocation:
        manifests = caller.manifests if caller else ()
        if manifest is not None:
            manifests = (*manifests, manifest)
        return cls(id_, pid, tool, manifests, caller.depth + 1 if caller else 0, limits,
                   caller=caller)

    def count_syscall(self) -> None:
        """Count one syscall attempt, allowed or refused, against this call and every call
        above it: a call's `max_syscalls` covers the tools it calls, so nesting cannot
        multiply it. Past a cap: `LimitExceeded`, which ends the call; `quiet` in its detail
        once the cap was crossed before (that attempt was recorded, these need not be)."""
        chain: list[Invocation] = []
        current: Invocation | None = self
        while current is not None:
            if current.exhausted:
                raise LimitExceeded(f"tool {current.tool} made more than "
                                    f"{current.limits.max_syscalls} syscalls",
                                    ends_call=True, quiet=True)
            chain.append(current)
            current = current.caller
        for inv in chain:
            inv.syscalls += 1
            if inv.syscalls > inv.limits.max_syscalls:
                inv.exhausted = True
                raise LimitExceeded(f"tool {inv.tool} made more than "
                                    f"{inv.limits.max_syscalls} syscalls", ends_call=True)

    @property
    def authority(self) -> str:
        """What a sandbox process serving this invocation is bound to for its whole life: the
        process and the whole chain of manifests that narrows it (a nested call's callers'
        included). Two invocations with different effective authority never share a sandbox
        process, so nothing a tool leaves in one can run under another authority."""
        chain = json.dumps([[spec.to_wire() for spec in m] for m in self.manifests],
                           sort_keys=True, separators=(",", ":"))
        return f"{self.pid}/{hashlib.sha256(chain.encode()).hexdigest()[:32]}"


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


# -- builtin tools ---------------------------------------------------------------------------

BuiltinFn = Callable[[dict[str, Any], KernelHost], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    description: str
    schema: dict[str, Any]
    fn: BuiltinFn
    syscall: str | None = None  # the one syscall a wrapper makes


BUILTINS: dict[str, Builtin] = {}


def builtin_wrapper(tool: str, syscall: str, description: str) -> None:
    """A builtin tool that is exactly one syscall: its schema is the syscall's own, so the
    two cannot drift apart."""

    async def call(args: dict[str, Any], host: KernelHost) -> Any:
        return await host.syscall(syscall, args)

    BUILTINS[tool] = Builtin(tool, description, TABLE[syscall].schema, call, syscall)


for _tool, _syscall, _description in (
    ("read_file", "fs.read", "Read a text file."),
    ("write_file", "fs.write", "Write a file (replace, or append with append=true)."),
    ("list_dir", "fs.list", "List a directory."),
    ("stat", "fs.stat", "Describe a file or directory."),
    ("make_dir", "fs.mkdir", "Make a directory."),
    ("remove", "fs.remove", "Remove a file or directory."),
    ("change_dir", "fs.chdir", "Change the working directory."),
    ("put_object", "obj.put", "Store a typed object in Object Memory."),
    ("get_object", "obj.get", "Read an object from Object Memory."),
    ("list_objects", "obj.list", "List objects in a namespace."),
    ("now", "clock.now", "The current time, in seconds since the epoch."),
    ("sleep", "clock.sleep", "Wait a number of seconds."),
    ("whoami", "proc.self", "This process: pid, parent, image, cwd."),
    ("spawn", "proc.spawn", "Start a child process from an image, with narrower capabilities."),
    ("wait", "proc.wait", "Wait for a child process to end."),
    ("signal", "proc.signal", "Kill, pause or resume a descendant process."),
    ("list_tools", "tool.list", "List the tools this process can call."),
    ("send", "proc.send", "Send a message to another process's mailbox."),
    ("receive", "proc.receive", "Wait for the next message in this process's mailbox."),
    ("raise_event", "proc.raise", "Raise a named event."),
    ("wait_event", "proc.wait_event", "Wait for a named event."),
    ("register_tool", "tool.register",
     "Register a new tool written in TypeScript (ts), WebAssembly (wat/wasm) or Python."),
):
    builtin_wrapper(_tool, _syscall, _description)

# Tools that reach people and the world outside the broker.
for _tool, _syscall, _description in (
    ("ask_human", "human.ask", "Ask a person a question (text, choices or a JSON Schema)."),
    ("run_command", "shell.run", "Run a program (argv) in the working directory."),
    ("fetch", "net.fetch", "Make an HTTP(S) request."),
):
    builtin_wrapper(_tool, _syscall, _description)


def builtin_spec(name: str) -> dict[str, Any]:
    builtin = BUILTINS.get(name)
    if builtin is None:
        raise InvalidArgument(f"no builtin tool {name!r}")
    return {"lang": "builtin", "description": builtin.description, "schema": builtin.schema,
            "manifest": None, "hash": None}


def tool_code(name: str, spec: dict[str, Any], source: bytes) -> ToolCode:
    return ToolCode(name=name, lang=spec["lang"], source=source, hash=spec["hash"])
