"""Proof-of-check values.

A provider's entry points take a `Proof` (or its path form, `CheckedPath`), never a bare
name. Only the capability check mints them, so an unchecked resource cannot reach a backend
by accident: a provider asserts the type with `require_proof`.
"""

from __future__ import annotations

from typing import TypeVar

from broker.caps.paths import VirtualPath

_MINT = object()  # only broker.caps passes this; everything else gets a TypeError


class Proof:
    """The capability check allowed `right` on `resource` of `kind`, through `cap_id`."""

    __slots__ = ("cap_id", "kind", "resource", "right")

    def __init__(self, token: object, kind: str, right: str, resource: str, cap_id: str) -> None:
        if token is not _MINT:
            raise TypeError("a Proof is minted only by the capability check")
        self.kind = kind
        self.right = right
        self.resource = resource
        self.cap_id = cap_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}:{self.right}:{self.resource} via {self.cap_id})"


class CheckedPath(Proof):
    """A path in the virtual tree, resolved (no symlinks left) and checked.

    `parts` are the components below the fs root; a provider opens them one by one without
    following links, so a link swapped in after the check fails instead of being followed.
    """

    __slots__ = ("parts", "want_dir")

    def __init__(
        self,
        token: object,
        right: str,
        resource: str,
        cap_id: str,
        parts: tuple[str, ...],
        want_dir: bool,
    ) -> None:
        super().__init__(token, "fs", right, resource, cap_id)
        self.parts = parts
        self.want_dir = want_dir


HOST_GRANT = "host"  # what a host proof names instead of a capability


def host_path(right: str, resolved: VirtualPath) -> CheckedPath:
    """The host's own access to a path (the embedding API's files): the host is the root of
    authority and holds no capability to name, but the path is still one the provider
    resolved inside its root, and still reaches the provider only as a proof."""
    return CheckedPath(_MINT, right, resolved.text, HOST_GRANT, resolved.parts,
                       resolved.want_dir)


P = TypeVar("P", bound=Proof)


def require_proof(value: object, cls: type[P]) -> P:
    if type(value) is not cls:
        raise TypeError(f"expected {cls.__name__} from the capability check, got {type(value)}")
    return value  # type: ignore[return-value]
