"""Exec'd between the broker and a shell command (`broker.providers.shell`): sets the
command's rlimits, no-new-privileges and its Landlock ruleset, then execs the command.

So no Python runs in a child forked from the broker (whose threads, forked with it, may
hold locks the child would wait on for ever: the `preexec_fn` hazard Python documents):
this runs in a process of its own, after exec, single-threaded. Run as
`python -I -S confine_exec.py CPU AS FSIZE NOFILE RULESET|- ENVFD PROGRAM ARG...`: the
command's environment comes in an inherited memfd, `K=V` entries each ended by NUL (this
interpreter runs with none, so nothing the caller's variables say reaches it, and nothing it
sets reaches the command; and not in its arguments, which any local user reads in /proc). It imports
only the standard library and `landlock.py` beside it (by path: not the `broker` package).
A confinement that fails runs nothing: exit 126, the reason on stderr.
"""

from __future__ import annotations

import os
import resource
import sys
from types import ModuleType

REFUSED = 126  # (the shell's "found but cannot run")


def _landlock() -> ModuleType:
    """`landlock.py` beside this file, run as a module of its own (not through importlib:
    this runs before every command, and its imports are most of the shim's cost)."""
    path = os.path.join(os.path.dirname(__file__), "landlock.py")
    module = ModuleType("libos_landlock")
    module.__file__ = path
    with open(path, "rb") as source:
        exec(compile(source.read(), path, "exec"), module.__dict__)
    return module


def confine(cpu: int, space: int, size: int, files: int, ruleset: int | None) -> None:
    for kind, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_AS, space), (resource.RLIMIT_FSIZE, size),
                        (resource.RLIMIT_NOFILE, files)):
        resource.setrlimit(kind, (value, value))
    landlock = _landlock()
    if ruleset is not None:
        landlock.restrict_self(ruleset)
        os.close(ruleset)
    else:
        landlock.no_new_privs()


def _environment(fd: int) -> dict[str, str]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    entries = b"".join(chunks).split(b"\0")[:-1]
    return dict(entry.decode("utf-8", "surrogateescape").split("=", 1) for entry in entries)


def main(argv: list[str]) -> None:
    cpu, space, size, files = (int(a) for a in argv[1:5])
    ruleset = None if argv[5] == "-" else int(argv[5])
    command = argv[7:]
    try:
        env = _environment(int(argv[6]))
        confine(cpu, space, size, files, ruleset)
    except Exception as exc:  # (a limit over the broker's own hard one is a ValueError)
        os.write(2, f"libos: the command was not confined, so not run: {exc}\n".encode())
        os._exit(REFUSED)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        os.write(2, f"libos: cannot run {command[0]}: {exc}\n".encode())
        os._exit(REFUSED)


def environment_fd(env: dict[str, str]) -> int:
    """A memfd holding `env` for the shim (the caller passes it on and closes its copy)."""
    fd = os.memfd_create("libos-shell-env", os.MFD_CLOEXEC)
    data = b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0"
                    for k, v in env.items())
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def arguments(cpu: int, space: int, size: int, files: int, ruleset: int | None,
              env_fd: int, command: list[str]) -> list[str]:
    """The argv that runs `command` through this shim (for `subprocess`, passing `env_fd`
    and `ruleset` on)."""
    return [sys.executable, "-I", "-S", __file__, str(cpu), str(space), str(size), str(files),
            "-" if ruleset is None else str(ruleset), str(env_fd), *command]


if __name__ == "__main__":
    main(sys.argv)
