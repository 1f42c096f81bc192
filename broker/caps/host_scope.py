"""Capability kinds of the embedder's host tools (an open set), and their scopes.

The builtin kinds (`fs`, `obj`, `shell`, ...) know a closed set of rights (`RIGHTS`). A host
tool declares a kind and a right of its own (`email:send`, `bank:transfer`): any short
lowercase name that is not a builtin kind. Naming a kind grants nothing: a process holds a
capability of it only when the host granted one (at spawn, or by answering a request), and
every derivation only narrows (`CapSpec.within`), so an open set lets no process invent
authority; a misspelt kind makes a capability that covers nothing.

A host kind's scope is an exact resource, `prefix*`, `*suffix` (`*@example.com`) or `*`
(everything). A resource (what a host tool derives from its arguments) may neither start nor
end with `*`, so a resource is never itself a pattern: approving one "always" grants exactly
it, whatever an argument held.
"""

from __future__ import annotations

import re
from typing import Any

from broker.errors import InvalidArgument

NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_RESOURCE = 1024


def is_host_kind(kind: Any) -> bool:
    """Is `kind` well formed for a host tool's kind? (Builtin kinds are checked first.)"""
    return isinstance(kind, str) and NAME.fullmatch(kind) is not None


def check_rights(kind: str, rights: frozenset[str]) -> None:
    bad = sorted(str(r)[:40] for r in rights if not isinstance(r, str) or not NAME.fullmatch(r))
    if bad:
        raise InvalidArgument(f"rights {bad} of kind {kind!r} are not lowercase names "
                              "(a letter, then up to 31 of a-z 0-9 _ -)")


def check_resource(resource: Any, what: str) -> str:
    """A host tool's resource as its capability check takes it, or InvalidArgument."""
    if not isinstance(resource, str):
        raise InvalidArgument(f"{what}: the resource must be a str, not "
                              f"{type(resource).__name__}")
    if not resource or len(resource) > MAX_RESOURCE or "\x00" in resource:
        raise InvalidArgument(f"{what}: the resource must be 1 to {MAX_RESOURCE} characters "
                              "without NUL")
    if resource.startswith("*") or resource.endswith("*"):
        raise InvalidArgument(f"{what}: a resource may not start or end with '*'")
    return resource


def _shape(scope: str) -> tuple[str, str]:
    """("all" | "prefix" | "suffix" | "exact", the fixed part)."""
    if scope == "*":
        return "all", ""
    if scope.endswith("*"):
        return "prefix", scope[:-1]
    if scope.startswith("*"):
        return "suffix", scope[1:]
    return "exact", scope


def matches(scope: str, resource: str) -> bool:
    shape, fixed = _shape(scope)
    if shape == "all":
        return True
    if shape == "prefix":
        return resource.startswith(fixed)
    if shape == "suffix":
        return resource.endswith(fixed)
    return resource == fixed


def is_subscope(inner: str, outer: str) -> bool:
    """Is every resource `inner` covers also covered by `outer`? (exact: when unsure, no)"""
    inner_shape, inner_fixed = _shape(inner)
    outer_shape, outer_fixed = _shape(outer)
    if outer_shape == "all":
        return True
    if inner_shape == "exact":
        return matches(outer, inner_fixed)
    if inner_shape != outer_shape:  # "all" inside a narrower scope, or prefix vs suffix
        return False
    if inner_shape == "prefix":
        return inner_fixed.startswith(outer_fixed)
    return inner_fixed.endswith(outer_fixed)
