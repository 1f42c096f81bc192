"""Per-process capability tables and the check that turns a request into a proof."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from broker.caps.capability import Capability, CapSpec, scope_covers
from broker.caps.labels import PUBLIC, Labels, show
from broker.caps.paths import FileId, VirtualPath, under
from broker.caps.proof import _MINT, CheckedPath, Proof
from broker.errors import NotCapable, NotFound


def new_handle() -> str:
    # 96 bits: a handle cannot be guessed, and means nothing outside its own table anyway.
    return "h_" + secrets.token_hex(12)


class NeedsApproval(Exception):
    """Internal signal: only an `ask` capability covers the request. The kernel turns it into
    an approval request (or, with nobody to ask, a denial)."""

    def __init__(self, cap: Capability, kind: str, right: str, resource: str,
                 labels: Labels = PUBLIC) -> None:
        super().__init__(f"{kind}:{right}:{resource} needs approval")
        self.cap = cap
        self.kind = kind
        self.right = right
        self.resource = resource
        # The caller's labels that the capability's flow bound asks about (empty when the
        # capability itself is an `ask` one): approving declassifies them for this call.
        self.labels = labels


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an allowed check: the proof, and the counted capability it spends (if
    any), which the dispatcher consumes atomically with the audit intent."""

    proof: Proof
    spends: Capability | None
    # The approval request this decision answers (None for an ordinary check).
    approval: str | None = None
    # The labels the allowing capability attaches to the call's result (a source).
    labels: Labels = PUBLIC


_new = object.__new__
_SETS = tuple(Decision.__dict__[name].__set__ for name in ("proof", "spends", "approval",
                                                            "labels"))


def allowed(proof: Proof, cap: Capability, labels: Labels) -> Decision:
    """`Decision(proof, spends, labels=labels)` of a check that `cap` allowed (what it spends:
    `cap` if its uses are counted). Made without the frozen dataclass's `__init__`, whose
    `object.__setattr__` per field cost twice what setting the slots does (every allowed
    call makes one); still frozen for everyone after."""
    decision = _new(Decision)
    set_proof, set_spends, set_approval, set_labels = _SETS
    set_proof(decision, proof)
    set_spends(decision, cap if cap.uses is not None else None)
    set_approval(decision, None)
    set_labels(decision, labels)
    return decision


# What `scope_covers` answered (a pure function of its strings), for the few scopes and
# resources a warm process asks about again and again: three calls deep, it was about half a
# decide. Bounded: short resources only, emptied whole when full.
_covered: dict[tuple[str, str, str, bool], bool] = {}
COVERED_MAX_ENTRIES = 4096
COVERED_MAX_RESOURCE = 256


def _covers(spec: CapSpec, kind: str, right: str, resource: str) -> bool:
    """`spec.covers(kind, right, resource)`, the scope's answer remembered for plain strings
    (a str subclass's hash and `==` may lie: it is never looked up, nor remembered)."""
    if spec.kind != kind or right not in spec.rights:
        return False
    scope = spec.scope
    if type(resource) is not str or type(scope) is not str or len(resource) > COVERED_MAX_RESOURCE:
        return spec.covers(kind, right, resource)
    key = (kind, scope, resource, spec.effect == "deny")
    found = _covered.get(key)
    if found is None:
        if len(_covered) >= COVERED_MAX_ENTRIES:
            _covered.clear()
        found = _covered[key] = scope_covers(kind, scope, resource, deny=key[3])
    return found


def _checked_path(right: str, resource: str, cap: Capability, resolved: VirtualPath,
                  identity: tuple[int, int] | None, linked: bool) -> CheckedPath:
    """`CheckedPath(_MINT, right, resource, cap.id, resolved.parts, resolved.want_dir,
    identity, linked, cap.scope)`, the tuple made here, without the keyword-rich `__new__`'s
    call (every audited fs call mints one); its fields' types made sure of as it does."""
    parts = resolved.parts
    return tuple.__new__(CheckedPath, (
        "fs", right, resource, cap.id, cap.scope,
        parts if type(parts) is tuple else tuple(parts), bool(resolved.want_dir),
        identity, linked))


class CapabilityTable:
    """Handle → capability for one process. Handles are unguessable and local."""

    def __init__(self, pid: int, entries: Iterable[tuple[str, Capability]] = ()) -> None:
        self.pid = pid
        self._by_handle: dict[str, Capability] = dict(entries)

    def __iter__(self) -> Iterator[tuple[str, Capability]]:
        return iter(list(self._by_handle.items()))

    def __len__(self) -> int:
        return len(self._by_handle)

    def add(self, cap: Capability, handle: str | None = None) -> str:
        handle = handle or new_handle()
        self._by_handle[handle] = cap
        return handle

    def get(self, handle: object) -> Capability:
        cap = self._by_handle.get(handle) if isinstance(handle, str) else None
        if cap is None:
            raise NotFound("no such capability handle in this process")
        return cap

    def handle_of(self, cap_id: str) -> str | None:
        for handle, cap in self._by_handle.items():
            if cap.id == cap_id:
                return handle
        return None

    def drop(self, cap_id: str) -> None:
        for handle in [h for h, c in self._by_handle.items() if c.id == cap_id]:
            del self._by_handle[handle]

    def replace(self, cap: Capability) -> None:
        handle = self.handle_of(cap.id)
        if handle is not None:
            self._by_handle[handle] = cap

    def caps(self) -> list[Capability]:
        return list(self._by_handle.values())

    def covering(self, spec: CapSpec, *, from_handle: str | None = None) -> Capability:
        """The capability of this table that `spec` narrows. Asking for more than any held
        capability covers is escalation: `NotCapable`."""
        candidates = [self.get(from_handle)] if from_handle is not None else self.caps()
        for held in candidates:
            if held.effect != "deny" and held.args_hash is None and spec.within(held):
                return held
        raise NotCapable(
            f"escalation: {spec.kind}:{spec.scope}:{','.join(sorted(spec.rights))} "
            f"({spec.effect}) is not within any capability process {self.pid} holds")

    # -- checks ---------------------------------------------------------------------------

    def decide(
        self,
        kind: str,
        right: str,
        resource: str,
        *,
        now: float,
        manifests: tuple[tuple[CapSpec, ...], ...] = (),
        args_hash: str | None = None,
        labels: Labels = PUBLIC,
    ) -> Capability:
        """The capability that allows the request. Deny rules win over everything; a
        capability bound to arguments covers only a request with exactly those arguments;
        a capability whose flow bound refuses the caller's `labels` allows nothing here (one
        that asks about them is an `ask` capability for this call)."""
        for manifest in manifests:
            for spec in manifest:
                if _covers(spec, kind, right, resource):
                    break
            else:
                raise NotCapable(f"{kind}:{right} on {resource!r} is outside the tool's manifest",
                                 resource=resource)
        allow: Capability | None = None
        ask: Capability | None = None
        asked: Labels = PUBLIC
        refused: Labels = PUBLIC
        for cap in self._by_handle.values():
            # (Another kind's capability is passed over before a call to `covers`: a table
            # holds several kinds, and most of a call's capabilities are of another.)
            if (cap.kind != kind or not _covers(cap, kind, right, resource)
                    or (cap.uses == 0 and cap.effect != "deny")):  # (a deny is never spent)
                continue
            if cap.expires is not None and cap.expires <= now:
                continue
            if cap.effect == "deny":
                raise NotCapable(f"{kind}:{right} on {resource!r} is denied by a rule",
                                 resource=resource)
            if cap.args_hash is not None and cap.args_hash != args_hash:
                continue
            if labels and cap.policy.flows:
                verdict, why = cap.policy.verdict(labels)
                if verdict == "deny":
                    refused |= why
                    continue
                if verdict == "ask":
                    if ask is None:
                        ask, asked = cap, why
                    continue
            if cap.effect == "ask":
                ask = ask or cap
            elif allow is None or (allow.uses is not None and cap.uses is None):
                # Prefer a standing capability to spending a counted one.
                allow = cap
            elif allow.args_hash is None and cap.args_hash is not None:
                # A grant made for exactly this call is spent before a general counted one.
                allow = cap
        if allow is not None:
            return allow
        if ask is not None:
            raise NeedsApproval(ask, kind, right, resource, asked)
        if refused:
            raise NotCapable(f"{kind}:{right} on {resource!r} refuses data labelled "
                             f"{show(refused)} (the caller's label is {show(labels)})",
                             resource=resource, labels=sorted(refused))
        raise NotCapable(f"no capability for {kind}:{right} on {resource!r}", resource=resource)

    def attached(self, kind: str, right: str, resource: str) -> Labels:
        """The labels of what a call on `resource` returns: those of every capability held
        that covers it, not only the one that allowed it (which one that is must not decide
        whether a secret is secret)."""
        labels = PUBLIC
        for cap in self._by_handle.values():
            if cap.policy.attach and _covers(cap, kind, right, resource):
                labels = labels | cap.policy.attach
        return labels

    def check(
        self,
        kind: str,
        right: str,
        resource: str,
        *,
        now: float,
        manifests: tuple[tuple[CapSpec, ...], ...] = (),
        args_hash: str | None = None,
        labels: Labels = PUBLIC,
    ) -> Decision:
        cap = self.decide(kind, right, resource, now=now, manifests=manifests,
                          args_hash=args_hash, labels=labels)
        proof = Proof(_MINT, kind, right, resource, cap.id, cap.scope)
        return allowed(proof, cap, self.attached(kind, right, resource))

    def check_path(
        self,
        right: str,
        path: VirtualPath,
        *,
        root: tuple[str, ...],
        locate: Callable[[VirtualPath], tuple[VirtualPath, FileId | None]],
        identify: Callable[[VirtualPath], FileId | None],
        now: float,
        manifests: tuple[tuple[CapSpec, ...], ...] = (),
        args_hash: str | None = None,
        refuse_links: bool = True,
        labels: Labels = PUBLIC,
    ) -> Decision:
        """Check the path as named, resolve its symlinks (inside the fs root, by the provider),
        and check the resolved path too: both must be allowed and inside the process root.

        A regular file with more than one name (a hard link) may be the same file as one a
        deny rule protects, or one outside the root: it is refused unless a capability with
        the `link` right covers it (`refuse_links=False` for removing a name, which never
        touches the file). The proof carries what the name led to, so the provider acts on
        that file or on nothing."""
        # (Keywords written out, not a `**kwargs` dict: unpacking one cost a quarter of a
        # decide; and each path's text made once.)
        text = path.text
        cap = self.decide("fs", right, text, now=now, manifests=manifests, args_hash=args_hash,
                          labels=labels)
        # (`locate` may identify the file in the same look that resolved it: only when it
        # resolves to itself, already decided on, so nothing about it is told before its check)
        resolved, found = locate(path)
        if not under(resolved.parts, root):
            raise NotCapable(f"{text!r} resolves outside the process root",
                             resource=resolved.text)
        if resolved.parts != path.parts:  # (the same path: the same answer, decide is pure)
            text = resolved.text
            cap = self.decide("fs", right, text, now=now, manifests=manifests,
                              args_hash=args_hash, labels=labels)
        if found is None:
            found = identify(resolved)
        linked = False
        if found is not None and found.names > 1 and refuse_links:
            try:
                self.decide("fs", "link", text, now=now, manifests=manifests,
                            args_hash=args_hash, labels=labels)
            except NotCapable:
                raise NotCapable(
                    f"{path.text!r} is a file with {found.names} names (a hard link): it may "
                    f"be another path's file, and no capability allows linked files there "
                    f"(fs:<scope>:link)", resource=text) from None
            linked = True
        proof = _checked_path(right, text, cap, resolved,
                              None if found is None else (found.dev, found.ino), linked)
        return allowed(proof, cap, self.attached("fs", right, text))
