"""The environment of a shell command: which variables pass, and how they are shown.

A variable reaches a command only if the checked resource names it: a command's resource is
its environment assignments, sorted by name and shell-quoted, then its argv, shell-quoted
(`TZ=UTC 'GIT_PAGER=less -R' git log`). So the person asked and the audit see every variable
with its whole value, and a capability scopes variables like arguments (see `shell_scope`).

Allowed without being named (the default set) are only variables that cannot make a common
program run code or read a file of the caller's choosing, and only with values of a shape
that keeps them so:

* `LC_ALL`, `LC_COLLATE`, `LC_CTYPE`, `LC_MESSAGES`, `LC_MONETARY`, `LC_NUMERIC`, `LC_TIME`:
  a locale name (`en_US.UTF-8`, `C`). No `/` and no leading `.`, so libc and gettext load
  only the system's locale data and message catalogs (a path would let them parse files
  the caller chose; message catalogs carry format strings). `LANGUAGE` (a list of paths in
  effect) is not in the set.
* `TZ`: a zone name (`Europe/Berlin`) or a POSIX rule (`EST5EDT,M3.2.0/2`). Not `:file`,
  not absolute, no `.` at the start of a part, so libc reads only files under its zoneinfo.
* `TERM`: a terminfo name, without `/`: curses reads only the system's terminfo (and
  `~/.terminfo`, but HOME is a fresh empty directory).
* `NO_COLOR`: programs only test whether it is set.
* `COLUMNS`, `LINES`: numbers.

Everything else (`GIT_*`, `PAGER`, `LESSOPEN`, `TAR_OPTIONS`, `SHELLOPTS`, `PS4`, `OPENSSL_CONF`,
`JAVA_TOOL_OPTIONS`, loader variables, and so on) passes only where a capability names it.
`PATH`, `HOME`, `TMPDIR` and `LANG` are always the broker's: it sets them after the caller's
environment, so naming them changes nothing (the resource still shows what was asked).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from broker.errors import InvalidArgument

MAX_ENV_VARS = 64
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
MAX_ENV_BYTES = 1 << 15  # names and values together
MAX_PROGRAM = 4096  # the length of argv[0]
# The whole resource (assignments and argv, quoted): what a person reads and every record of
# the call holds, so it is bounded like any other resource (an argv may otherwise fill a frame).
MAX_COMMAND = 1 << 17

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A word that a shell would read as an assignment, not as the program: `NAME=...`.
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)

_LOCALE = re.compile(r"(?:C|POSIX|[A-Za-z]{2,8}(?:_[A-Za-z0-9]{2,8})?)"
                     r"(?:\.[A-Za-z0-9-]{1,32})?(?:@[A-Za-z0-9]{1,32})?")
_LOCALE_NAMES = ("LC_ALL", "LC_COLLATE", "LC_CTYPE", "LC_MESSAGES", "LC_MONETARY",
                 "LC_NUMERIC", "LC_TIME")

# name -> the values it may have without a capability naming it (whole-string match).
DEFAULT_ENV: Mapping[str, re.Pattern[str]] = {
    **{name: _LOCALE for name in _LOCALE_NAMES},
    "TZ": re.compile(r"(?!(?:.*/)?\.)[A-Za-z0-9<+-][A-Za-z0-9<>_+,.:/-]{0,63}"),
    "TERM": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"),
    "NO_COLOR": re.compile(r"[A-Za-z0-9_.-]{0,16}"),
    "COLUMNS": re.compile(r"[0-9]{1,4}"),
    "LINES": re.compile(r"[0-9]{1,4}"),
}


def is_default(name: str, value: str) -> bool:
    """Does `name=value` pass without a capability naming it?"""
    pattern = DEFAULT_ENV.get(name)
    return pattern is not None and pattern.fullmatch(value) is not None


def check_env(env: Any) -> dict[str, str]:
    """The shape and bounds of an environment (which names pass is the capability's
    business). Typed errors; names in messages are cut, never the check."""
    if not isinstance(env, dict):
        raise InvalidArgument("shell.run: env must be a map of names to strings")
    if len(env) > MAX_ENV_VARS:
        raise InvalidArgument(f"shell.run: more than {MAX_ENV_VARS} environment variables")
    for name, value in env.items():
        if not isinstance(name, str) or len(name) > MAX_ENV_NAME:
            raise InvalidArgument(f"shell.run: environment variable names are at most "
                                  f"{MAX_ENV_NAME} characters")
        if not ENV_NAME.fullmatch(name):
            raise InvalidArgument(f"shell.run: {name[:64]!r} is not an environment variable name")
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE:
            raise InvalidArgument(f"shell.run: the value of {name} is not a string of at most "
                                  f"{MAX_ENV_VALUE} characters")
        if "\x00" in value:
            raise InvalidArgument(f"shell.run: NUL byte in the value of {name}")
    if sum(len(name) + len(value) for name, value in env.items()) > MAX_ENV_BYTES:
        raise InvalidArgument(f"shell.run: the environment is over {MAX_ENV_BYTES} characters")
    return env


def check_program(argv: Iterable[str]) -> None:
    """A program name that reads as an assignment would make the resource ambiguous."""
    program = next(iter(argv), "")
    if len(program) > MAX_PROGRAM:
        raise InvalidArgument(f"shell.run: a program name is at most {MAX_PROGRAM} characters")
    if ASSIGNMENT.fullmatch(program):
        raise InvalidArgument("shell.run: a program name may not look like NAME=value")


class ShellCommand(str):
    """A command's resource, carrying the parts it was made of: one check compares it with
    every capability of a process, and parsing a long environment again each time costs."""

    __slots__ = ("argv", "env")
    env: Mapping[str, str]
    argv: str  # the argv part, shell-quoted and joined


def command_resource(env: Mapping[str, str], argv: Iterable[str]) -> ShellCommand:
    """The resource a `shell:run` capability scopes: the assignments (sorted by name) and
    the argv, each shell-quoted, joined by single spaces."""
    words = list(argv)
    check_program(words)
    names = sorted(env)
    command = ShellCommand(shlex.join([*(f"{name}={env[name]}" for name in names), *words]))
    if len(command) > MAX_COMMAND:
        raise InvalidArgument(f"shell.run: the command, with its environment, is over "
                              f"{MAX_COMMAND} characters (as shell-quoted words)")
    command.env = MappingProxyType({name: env[name] for name in names})
    command.argv = shlex.join(words)
    return command
