"""shell: run a program, under a capability scoped by its environment, program and arguments.

Scope syntax (kind `shell`, right `run`). The resource of a call is its environment
assignments, sorted by name, then its argv, each shell-quoted and joined with single spaces
(`TZ=UTC 'GIT_PAGER=less -R' git log`). Scopes are the ordinary patterns over the argv part,
led by the variables they allow (`broker.caps.shell_scope`):

* `git status` — exactly `git status`, no further arguments, no variable beyond the default
  set (`broker.caps.shell_env`: locale, `TZ`, `TERM`, `NO_COLOR`, `COLUMNS`, `LINES`);
* `git status *` — `git status` followed by any arguments (`git status --short`);
* `GIT_PAGER=* git log *` — `git log ...`, also with `GIT_PAGER` set to anything;
* `git *` — any git subcommand; `*` — any command (think twice), default variables only.

A shell string (`command`) runs as `sh -c STRING` and its resource ends in
`shlex.join(["sh", "-c", STRING])`, so only a capability whose scope covers that form, e.g.
`sh -c *`, allows shell strings at all. Note that `git status*` (no space) would also cover
`git statusx`: put the space in.

The working directory (`cwd`, default the process's cwd) must be a directory inside the
process's fs root; symlinks are resolved inside the root first. That is part of the call's
check (a cwd outside the root is a denial, before anything runs); should the cwd resolve
elsewhere by the time the command starts, the call fails with `Conflict`. The command runs in
the directory the fs provider opens from its pinned root (`LocalFs.open_directory`, O_PATH: a
directory the broker may search but not read is a cwd, as for `chdir`), never one found again
by the root's host name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from broker.caps import Decision
from broker.caps.paths import under
from broker.caps.shell_env import (
    MAX_ENV_NAME,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    check_env,
    command_resource,
)
from broker.errors import Conflict, InvalidArgument, NotCapable
from broker.providers import procfd
from broker.providers.shell import ShellRequest
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import PATH, syscall

MAX_ARG = 1 << 16
MAX_STDIN = 1 << 20


def _argv(args: dict[str, Any]) -> list[str]:
    has_argv, has_command = "argv" in args, "command" in args
    if has_argv == has_command:
        raise InvalidArgument("shell.run: give exactly one of argv and command")
    argv = args["argv"] if has_argv else ["sh", "-c", args["command"]]
    if any("\x00" in a for a in argv):
        raise InvalidArgument("shell.run: NUL byte in the command")
    if not argv[0]:
        raise InvalidArgument("shell.run: empty program name")
    return argv


def _cwd(ctx: SyscallContext, args: dict[str, Any]) -> tuple[str, ...]:
    """The components of the call's cwd (default: the process's), symlinks resolved."""
    cwd = args.get("cwd") or ctx.view(ctx.process.cwd)
    return ctx.services.fs.resolve(ctx.path(cwd)).parts


def _root(ctx: SyscallContext) -> tuple[str, ...]:
    return tuple(p for p in ctx.process.root.split("/") if p)


def _authorize(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    argv = _argv(args)
    # Every variable is in the resource, in full: what is checked, asked and audited.
    resource = command_resource(check_env(args.get("env", {})), argv)
    if "\x00" in args.get("stdin", ""):
        raise InvalidArgument("shell.run: NUL byte in stdin", resource=resource)
    if not isinstance(getattr(ctx.services.fs, "root", None), str):
        raise InvalidArgument("shell.run needs a local filesystem provider", resource=resource)
    if not under(_cwd(ctx, args), _root(ctx)):
        raise NotCapable(f"shell.run: cwd {args.get('cwd')!r} resolves outside the process "
                         "root", resource=resource)
    return ctx.check("shell", "run", resource)


@contextlib.contextmanager
def _host_dirs(ctx: SyscallContext, args: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host cwd, host fs root of the process), for the cwd the check allowed: each a
    /proc/self/fd path of a directory the fs provider opened from its pinned root, so a
    directory put in the root's place after the provider was made is never where a command
    runs or what it may write (a host path only where there is no procfs, or the provider
    cannot open one)."""
    fs = ctx.services.fs
    host_root: str = fs.root  # type: ignore[attr-defined]
    parts, root = _cwd(ctx, args), _root(ctx)
    if not under(parts, root):
        raise Conflict("shell.run: the cwd resolves elsewhere than when it was checked")
    opener = getattr(fs, "open_directory", None)
    if opener is None or procfd.fd_dir() is None:
        yield os.path.join(host_root, *parts), os.path.join(host_root, *root)
        return
    fds: list[int] = []
    try:
        fds.append(opener(parts))
        fds.append(opener(root))
        # (The child's own /proc/self/fd holds the same descriptor until its exec.)
        yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
    finally:
        for fd in fds:
            os.close(fd)


@syscall(
    "shell.run",
    doc="Run a program: argv (or, where a capability allows `sh -c ...`, a shell command "
        "string) in cwd, with a scrubbed environment plus env (each variable outside a small "
        "default set must be named by the capability), stdin, and time/output caps. "
        "Returns {exit_code, stdout, stderr}; exit_code < 0 is the signal that ended it.",
    args={
        "argv": {"type": "array", "minItems": 1, "maxItems": 1024,
                 "items": {"type": "string", "maxLength": MAX_ARG}},
        "command": {"type": "string", "minLength": 1, "maxLength": MAX_ARG},
        "cwd": PATH,
        "env": {"type": "object", "maxProperties": MAX_ENV_VARS,
                "propertyNames": {"maxLength": MAX_ENV_NAME},
                "additionalProperties": {"type": "string", "maxLength": MAX_ENV_VALUE}},
        "stdin": {"type": "string", "maxLength": MAX_STDIN},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "max_output": {"type": "integer", "minimum": 1},
    },
    kind="shell",
    right="run",
    authorize=_authorize,
    blocking=True,
)
async def shell_run(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    with _host_dirs(ctx, args) as (cwd, root):
        request = ShellRequest(
            argv=tuple(_argv(args)), cwd=cwd, writable=(root,), env=dict(args.get("env", {})),
            stdin=args.get("stdin", "").encode(), timeout=args.get("timeout"),
            max_output=args.get("max_output"))
        return await ctx.services.shell.run(proof, request)
