"""Object Memory scopes: a whole namespace, a pattern of namespaces, one object, or a pattern
of objects inside a namespace.

Resources of kind `obj` are an object, `NS/NAME`, or a namespace (what `obj.list` reads),
`NS`. A namespace is `proc/<pid>` (a process's own) or one name without a slash
(`[A-Za-z0-9_.-]+`, never `proc` itself), so the first slash after the namespace always
separates it from the object's name, and `shared/api_key` can only mean the object `api_key`
in `shared`. Scopes:

* `shared` — the namespace `shared`: every object in it, and listing it;
* `shared/api_key` — that one object (`proc/7/notes`: the object `notes` of process 7);
* `shared/api_*` — the objects of `shared` whose names start with `api_`;
* `team.*`, `*` — every namespace (and its objects) whose name starts with `team.`, or all;
* `shared/**` — the same as `shared` (the path form).

Each scope is a set of resource strings, described by one exact member and one prefix (either
may be absent), which keeps "is A inside B" exact.
"""

from __future__ import annotations

import re

_NAMESPACE = re.compile(r"proc/[1-9][0-9]*|(?!proc\Z)[A-Za-z0-9_.-]+\Z")
# The argument schema of every obj syscall's `ns` (the same rule, for JSON Schema).
NAMESPACE_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 256,
                    "pattern": r"^(proc/[1-9][0-9]*|[A-Za-z0-9_.-]+)$", "not": {"const": "proc"}}


def is_namespace(text: str) -> bool:
    return _NAMESPACE.fullmatch(text) is not None


def object_resource(ns: str, name: str) -> str:
    return f"{ns}/{name}"


def members(ns: str) -> str:
    """The prefix every object resource of namespace `ns` starts with."""
    return ns + "/"


def _denotes(scope: str) -> tuple[str | None, str | None]:
    """(the one resource named exactly, the prefix of every other one covered)."""
    if scope.endswith("/**"):
        base = scope[:-3]
        return (base or None), base + "/"
    if scope.endswith("*"):
        return None, scope[:-1]
    if is_namespace(scope):
        return scope, members(scope)
    return scope, None


def matches(scope: str, resource: str) -> bool:
    exact, prefix = _denotes(scope)
    return resource == exact or (prefix is not None and resource.startswith(prefix))


def is_subscope(inner: str, outer: str) -> bool:
    """Is every resource `inner` covers also covered by `outer`? Exact: a prefix is inside
    only another prefix that starts it."""
    exact, prefix = _denotes(inner)
    if exact is not None and not matches(outer, exact):
        return False
    if prefix is None:
        return True
    _, outer_prefix = _denotes(outer)
    return outer_prefix is not None and prefix.startswith(outer_prefix)


def reaches(scope: str, ns: str) -> bool:
    """Does `scope` cover the namespace `ns` or at least one object that could be in it?"""
    if matches(scope, ns):
        return True
    inside = members(ns)
    exact, prefix = _denotes(scope)
    if exact is not None and exact.startswith(inside):
        return True
    return prefix is not None and (prefix.startswith(inside) or inside.startswith(prefix))
