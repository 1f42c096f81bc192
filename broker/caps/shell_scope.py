"""Shell scopes: the ordinary scope patterns over the argv, plus the variables a scope names.

A `shell` resource is `ASSIGNMENTS ARGV` (see `shell_env.command_resource`). A `shell` scope
is written the same way: leading assignment words name the variables it allows, and the rest
is an ordinary scope pattern (`scope.matches`) over the shell-quoted argv:

* `git status` — exactly `git status`, with no variable beyond the default set;
* `GIT_PAGER=* git status` — the same, and `GIT_PAGER` with any value (or without it);
* `GIT_PAGER=cat git log *` — `git log` with any arguments, and `GIT_PAGER` only as `cat`
  (a value is written as the resource shows it: `'GIT_PAGER=less -R'`);
* `*` — any command, with the default set only. No pattern names variables in bulk: each
  one outside the default set is spelled out.

An allowing (or asking) capability covers a command when its argv pattern matches and every
variable of the command is either named by the scope with a matching value or in the default
set. A deny rule covers a command when its argv pattern matches and the command has every
variable the rule names, with a matching value: `git push *` denies `git push` (with any
arguments or none) with any environment, `GIT_SSH_COMMAND=* *` denies any command given
`GIT_SSH_COMMAND`.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from types import MappingProxyType

from broker.caps import scope as plain
from broker.caps.scope import MAX_SCOPE_LEN
from broker.caps.shell_env import ASSIGNMENT, ShellCommand, is_default

# shlex.quote's two forms: a run of safe characters, or '...' with each ' inside written as
# '"'"'. Written without an alternation inside the loop: Python's re is slow at that, and a
# resource's word can hold thousands of quotes.
_CANONICAL = re.compile(r"""'[^']*+'(?:"'"'[^']*+')*+|[^\s'"\\]++""")
# Any other quoting a person may write in a scope (plain characters, '...' and "..." parts
# with nothing a shell would expand). A scope word quoted otherwise ends the assignments:
# what follows is matched as argv, which the canonical quoting of a resource never equals.
_WORD = re.compile(r"""(?:[^\s'"\\]++|'[^']*+'|"[^"\\$`]*+")++""")
_PART = re.compile(r"""'([^']*)'|"([^"]*)"|([^'"]+)""")
_QUOTE_IN_QUOTES = "'\"'\"'"

ANY = None  # `NAME=*`: any value
Assignments = Mapping[str, str | None]


def _word(text: str, pos: int) -> tuple[str, int] | None:
    """The whole word at `pos` (raw, as written) and where it ends, if there is one."""
    for pattern in (_CANONICAL, _WORD):
        found = pattern.match(text, pos)
        if found is not None and (found.end() == len(text) or text[found.end()] == " "):
            return found.group(), found.end()
    return None


def _unquote(word: str) -> str:
    if word.startswith("'"):
        # shlex.quote's own form (every quoted resource word): undone at C speed, checked.
        inner = word[1:-1].replace(_QUOTE_IN_QUOTES, "'")
        if shlex.quote(inner) == word:
            return inner
    return "".join(m.group(1) or m.group(2) or m.group(3) or "" for m in _PART.finditer(word))


def split(text: str) -> tuple[Assignments, str] | None:
    """(the leading assignments, the rest) of a scope or resource; None when a variable is
    named twice (such a scope covers nothing). A resource made by `command_resource` comes
    with its parts; scopes (short) are parsed once and kept."""
    if isinstance(text, ShellCommand):
        return text.env, text.argv
    return _split_cached(text) if len(text) <= MAX_SCOPE_LEN else _split(text)


def _split(text: str) -> tuple[Assignments, str] | None:
    env: dict[str, str | None] = {}
    pos = 0
    while (word := _word(text, pos)) is not None:
        raw, end = word
        assignment = ASSIGNMENT.fullmatch(_unquote(raw))
        if assignment is None:
            break
        name = assignment.group(1)
        if name in env:
            return None
        env[name] = ANY if raw == f"{name}=*" else assignment.group(2)
        pos = end
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return MappingProxyType(env), text[pos:]


_split_cached = functools.lru_cache(maxsize=64)(_split)


def _value_ok(want: str | None, value: str) -> bool:
    return want is ANY or want == value


def _bare(argv_scope: str, argv: str) -> bool:
    """A deny rule `git push *` covers `git push` with no arguments too (which pushes as
    much as any): an allow scope's ` *` adds arguments, a deny rule's may as well be none."""
    return argv_scope.endswith(" *") and argv == argv_scope[:-2]


def matches(scope: str, resource: str, *, deny: bool = False) -> bool:
    """Does `scope` cover the command `resource` (as an allow or ask scope, or as a deny
    rule)?"""
    parts, command = split(scope), split(resource)
    if parts is None or command is None:
        return False
    allowed, argv_scope = parts
    env, argv = command
    if not plain.matches(argv_scope, argv) and not (deny and _bare(argv_scope, argv)):
        return False
    if deny:
        return all(name in env and _value_ok(want, env[name]) for name, want in allowed.items())
    return all((name in allowed and _value_ok(allowed[name], value)) or is_default(name, value)
               for name, value in env.items())


def is_subscope(inner: str, outer: str) -> bool:
    """Does `outer` allow every command `inner` allows? (Exact in the widening direction:
    when unsure, no.)"""
    inner_parts, outer_parts = split(inner), split(outer)
    if inner_parts is None or outer_parts is None:
        return False
    inner_env, inner_argv = inner_parts
    outer_env, outer_argv = outer_parts
    if not plain.is_subscope(inner_argv, outer_argv):
        return False
    for name, want in inner_env.items():
        if name in outer_env and (outer_env[name] is ANY or outer_env[name] == want):
            continue
        if want is not ANY and is_default(name, want):
            continue  # the only value inner allows passes everywhere anyway
        return False
    return True
