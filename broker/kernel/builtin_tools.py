"""The builtin tools: Python functions over the same host a sandboxed tool talks to. Each is
exactly one syscall, so its schema is that syscall's own and the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from broker.errors import InvalidArgument
from broker.syscalls import TABLE
from sandboxes.base import SyscallHost

BuiltinFn = Callable[[dict[str, Any], SyscallHost], Awaitable[Any]]


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

    async def call(args: dict[str, Any], host: SyscallHost) -> Any:
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
    ("exec", "proc.exec", "Replace this process's image with another (capabilities narrow)."),
    ("register_image", "image.register", "Register an image within this process's authority."),
    ("commit_image", "image.commit", "Make an image from this process's latest checkpoint."),
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
