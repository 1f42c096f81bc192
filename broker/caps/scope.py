"""Scope patterns: what resources a capability covers, and whether one scope lies inside another.

The pattern language is deliberately small so that "is A inside B" is decidable exactly:

* an exact resource: ``/data/report.txt``, ``team``, ``word_count``
* a trailing ``*`` (names): ``team.*`` covers every resource that starts with ``team.``;
  ``*`` alone covers everything
* a trailing ``/**`` (paths): ``/data/**`` covers ``/data`` and everything below it;
  ``/**`` covers the whole tree

A ``*`` anywhere else is an ordinary character. Shell scopes are these patterns over the
argv, led by the environment variables they allow (``shell_scope``).
"""

from __future__ import annotations

from broker.errors import InvalidArgument

MAX_SCOPE_LEN = 4096


def validate_scope(scope: str) -> str:
    if not isinstance(scope, str) or not scope:
        raise InvalidArgument("a scope must be a non-empty string")
    if len(scope) > MAX_SCOPE_LEN or "\x00" in scope:
        raise InvalidArgument("scope too long or contains NUL")
    return scope


def _prefix(scope: str) -> tuple[str, bool]:
    """Split a scope into (prefix, is_pattern)."""
    if scope == "/**":
        return "/", True
    if scope.endswith("/**"):
        return scope[:-3], True
    if scope.endswith("*"):
        return scope[:-1], True
    return scope, False


def _under(path: str, directory: str) -> bool:
    if directory == "/":
        return path.startswith("/")
    return path == directory or path.startswith(directory + "/")


def matches(scope: str, resource: str) -> bool:
    """Does `scope` cover `resource`?"""
    if scope.endswith("/**"):
        return _under(resource, scope[:-3] or "/")
    if scope.endswith("*"):
        return resource.startswith(scope[:-1])
    return resource == scope


def is_subscope(inner: str, outer: str) -> bool:
    """Is every resource `inner` covers also covered by `outer`? (exact, never approximate
    in the widening direction: when unsure, the answer is no)."""
    inner_prefix, inner_pattern = _prefix(inner)
    if not inner_pattern:
        return matches(outer, inner)
    outer_prefix, outer_pattern = _prefix(outer)
    if not outer_pattern:
        return False
    if inner.endswith("/**"):
        if outer.endswith("/**"):
            return _under(inner_prefix or "/", outer_prefix or "/")
        # a name pattern covers a subtree only if it covers the subtree's directory prefix
        return (inner_prefix or "/").startswith(outer_prefix)
    if outer.endswith("/**"):
        # "team*" could match "teamX", which no subtree pattern of a directory covers
        return False
    return inner_prefix.startswith(outer_prefix)
