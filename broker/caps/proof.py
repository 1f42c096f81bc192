"""Proof-of-check values.

A provider's entry points take a `Proof` (or its path form, `CheckedPath`), never a bare
name. Only the capability check mints them, so an unchecked resource cannot reach a backend
by accident: a provider asserts the type with `require_proof`.

A proof is immutable once minted: it is a tuple underneath, and its fields are read-only
properties, so neither assignment nor `object.__setattr__` can point a checked proof at
another resource between the check and the use.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, TypeVar

from broker.caps.paths import FileId, VirtualPath

_MINT = object()  # only broker.caps passes this; everything else gets a TypeError


def _field(index: int, doc: str) -> Any:
    return property(itemgetter(index), doc=doc)


class Proof(tuple):  # type: ignore[type-arg]
    """The capability check allowed `right` on `resource` of `kind`, through `cap_id`, whose
    scope is `scope` (what a primitive may still need to know of it when it acts: that a
    network capability names its host itself, say, after that capability's last use)."""

    __slots__ = ()

    def __new__(cls, token: object, kind: str, right: str, resource: str,
                cap_id: str, scope: str = "") -> Proof:
        if token is not _MINT:
            raise TypeError("a Proof is minted only by the capability check")
        return tuple.__new__(cls, (kind, right, resource, cap_id, scope))

    kind: str = _field(0, "the resource kind checked")
    right: str = _field(1, "the right checked")
    resource: str = _field(2, "the resource checked (for a path: resolved, no symlinks)")
    cap_id: str = _field(3, "the capability that allowed it")
    scope: str = _field(4, "the scope of that capability")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}:{self.right}:{self.resource} via {self.cap_id})"


class CheckedPath(Proof):
    """A path in the virtual tree, resolved (no symlinks left) and checked.

    `parts` are the components below the fs root; a provider opens them one by one without
    following links, so a link swapped in after the check fails instead of being followed.
    `identity` is what the name led to at the check (device and inode; None when nothing was
    there yet): a provider refuses to act on anything else. `linked` says a capability allows
    a file with more than one name (a hard link) here.
    """

    __slots__ = ()

    def __new__(  # type: ignore[misc]
        cls,
        token: object,
        right: str,
        resource: str,
        cap_id: str,
        parts: tuple[str, ...],
        want_dir: bool,
        identity: tuple[int, int] | None = None,
        linked: bool = False,
        scope: str = "",
    ) -> CheckedPath:
        if token is not _MINT:
            raise TypeError("a Proof is minted only by the capability check")
        return tuple.__new__(cls, ("fs", right, resource, cap_id, scope, tuple(parts),
                                   bool(want_dir), None if identity is None else tuple(identity),
                                   bool(linked)))

    parts: tuple[str, ...] = _field(5, "components below the fs root")
    want_dir: bool = _field(6, "the path was named with a trailing slash")
    identity: tuple[int, int] | None = _field(7, "(device, inode) at the check, or None")
    linked: bool = _field(8, "a capability allows a hard-linked file here")


class CheckedListing(Proof):
    """A listing of a container (an Object Memory namespace) that the check allowed, and
    which of its members the caller may see: `visible(resource)` answers from the
    capabilities, manifests and clock as they were at the check, so the handler applies the
    check's decision and makes none of its own."""

    __slots__ = ()

    def __new__(  # type: ignore[misc]
        cls, token: object, kind: str, right: str, resource: str, cap_id: str,
        visible: Callable[[str], bool], scope: str = "",
    ) -> CheckedListing:
        if token is not _MINT:
            raise TypeError("a Proof is minted only by the capability check")
        return tuple.__new__(cls, (kind, right, resource, cap_id, scope, visible))

    visible: Callable[[str], bool] = _field(5, "may the caller see this member?")


HOST_GRANT = "host"  # what a host proof names instead of a capability


def host_path(right: str, resolved: VirtualPath, found: FileId | None) -> CheckedPath:
    """The host's own access to a path (the embedding API's files): the host is the root of
    authority and holds no capability to name, but the path is still one the provider
    resolved inside its root, and still reaches the provider only as a proof. `found` is
    what the name led to when the host looked (the provider acts on nothing else); a file
    with several names is the host's to use."""
    return CheckedPath(_MINT, right, resolved.text, HOST_GRANT, resolved.parts,
                       resolved.want_dir, None if found is None else found.key, linked=True)


P = TypeVar("P", bound=Proof)


def require_proof(value: object, cls: type[P]) -> P:
    if type(value) is not cls:
        raise TypeError(f"expected {cls.__name__} from the capability check, got {type(value)}")
    return value  # type: ignore[return-value]
