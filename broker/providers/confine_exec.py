"""Exec'd between the broker and a shell command (`broker.providers.shell`): sets the
command's rlimits, no-new-privileges and its Landlock ruleset, then execs the command.

So no Python runs in a child forked from the broker (whose threads, forked with it, may
hold locks the child would wait on for ever: the `preexec_fn` hazard Python documents):
this runs in a process of its own, after exec, single-threaded. Run as
`python -I -S confine_exec.py CPU AS FSIZE NOFILE RULESET|- N K=V*N PROGRAM ARG...`: the
command's environment comes in its arguments (this interpreter runs with none, so nothing
the caller's variables say reaches it, and nothing it sets reaches the command). It imports
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


def main(argv: list[str]) -> None:
    cpu, space, size, files = (int(a) for a in argv[1:5])
    ruleset = None if argv[5] == "-" else int(argv[5])
    count = int(argv[6])
    env = dict(item.split("=", 1) for item in argv[7:7 + count])
    command = argv[7 + count:]
    try:
        confine(cpu, space, size, files, ruleset)
    except OSError as exc:
        os.write(2, f"libos: the command was not confined, so not run: {exc}\n".encode())
        os._exit(REFUSED)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        os.write(2, f"libos: cannot run {command[0]}: {exc}\n".encode())
        os._exit(REFUSED)


def arguments(cpu: int, space: int, size: int, files: int, ruleset: int | None,
              env: dict[str, str], command: list[str]) -> list[str]:
    """The argv that runs `command` through this shim (for `subprocess`)."""
    return [sys.executable, "-I", "-S", __file__, str(cpu), str(space), str(size), str(files),
            "-" if ruleset is None else str(ruleset), str(len(env)),
            *(f"{k}={v}" for k, v in env.items()), *command]


if __name__ == "__main__":
    main(sys.argv)
