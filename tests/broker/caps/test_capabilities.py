"""Capabilities: parsing, decisions (deny wins, ask, expiry, counted uses, bound arguments,
manifests), attenuation and escalation, children, revocation, handles, proof-of-check.

Unit tests drive `broker.caps` directly; the process tests go through a real kernel (the
builtin `spawn` tool → `proc.spawn` syscall) and check the audit record of every attack.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import FakeClock, Kernel
from broker.caps import (
    CapabilityRegistry,
    CapabilityTable,
    CapSpec,
    CheckedPath,
    NeedsApproval,
    Proof,
    VirtualPath,
)
from broker.caps.capability import Capability
from broker.caps.table import new_handle
from broker.errors import ApprovalDenied, InvalidArgument, NotCapable, NotFound
from broker.providers.fs import LocalFs
from broker.store import args_hash
from tests.conftest import open_image

NOW = 1_700_000_000.0


def spec(text: str, **extra: Any) -> CapSpec:
    """"kind:scope:rights" plus any of effect/uses/expires."""
    kind, _, rest = text.partition(":")
    scope, _, rights = rest.rpartition(":")
    return CapSpec.parse({"kind": kind, "scope": scope, "rights": rights.split(","), **extra})


def audit_of(kernel: Kernel, pid: int, *, phase: str | None = None,
             syscall: str | None = None) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid)
            if (phase is None or r["phase"] == phase)
            and (syscall is None or r["syscall"] == syscall)]


def last_error(kernel: Kernel, pid: int, syscall: str) -> dict[str, Any]:
    """The newest audit record for `syscall` of `pid` that carries an error."""
    records = [r for r in kernel.audit(pid)
               if r["syscall"] == syscall and "error" in r["detail"]]
    assert records, f"no audited failure of {syscall} for pid {pid}"
    return records[-1]


# -- CapSpec.parse ------------------------------------------------------------------------------


def test_parse_short_form() -> None:
    cap = CapSpec.parse("fs:/data/**:read,write")
    assert (cap.kind, cap.scope, cap.rights) == ("fs", "/data/**", frozenset({"read", "write"}))
    assert cap.effect == "allow" and cap.uses is None and cap.expires is None
    # the scope may itself contain colons; the rights are after the last one
    assert CapSpec.parse("obj:team:shared:read").scope == "team:shared"


def test_parse_dict_form_and_wire_round_trip() -> None:
    value = {"kind": "obj", "scope": "team.*", "rights": ["read"], "effect": "ask", "uses": 3,
             "expires": 12}
    cap = CapSpec.parse(value)
    assert cap == CapSpec("obj", "team.*", frozenset({"read"}), "ask", 3, 12.0)
    assert isinstance(cap.expires, float)
    assert CapSpec.parse(cap.to_wire()) == cap
    assert CapSpec.parse(cap) is cap


@pytest.mark.parametrize("value", [
    # short form
    "fs", "fs:read", "fs::read", "fs:/data/**:", "fs:/data/**:read,", "fs:/data/**:execute",
    ":/data/**:read", "fs:/data/**:read,fetch", "fs:a\x00b:read",
    # a kind that is neither builtin nor a well-formed host kind; a host kind's bad rights
    "Disk:/data/**:read", "di sk:x:read", "disk:x:READ", "disk:x:read,", "x" * 33 + ":x:read",
    # dict form: unknown kind / right / effect / field, bad types, missing keys
    {"kind": "Disk", "scope": "/x", "rights": ["read"]},
    {"kind": "disk", "scope": "/x", "rights": ["re ad"]},
    {"kind": "fs", "scope": "/x", "rights": ["execute"]},
    {"kind": "fs", "scope": "/x", "rights": ["run"]},  # a right, but of another kind
    {"kind": "fs", "scope": "/x", "rights": []},
    {"kind": "fs", "scope": "/x", "rights": "read"},
    {"kind": "fs", "scope": "/x", "rights": [1]},
    {"kind": "fs", "scope": "/x", "rights": None},
    {"kind": "fs", "scope": "/x", "rights": 7},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "effect": "maybe"},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "effect": ["allow"]},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "owner": 1},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "parent": "cap_x"},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "args_hash": "00"},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "uses": 0},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "uses": -1},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "uses": 1.5},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "uses": "1"},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "expires": "tomorrow"},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "expires": float("nan")},
    # a bool is an int to Python, but `true` is no count of uses and no time
    {"kind": "fs", "scope": "/x", "rights": ["read"], "uses": True},
    {"kind": "fs", "scope": "/x", "rights": ["read"], "expires": True},
    {"kind": "fs", "scope": "", "rights": ["read"]},
    {"kind": "fs", "scope": 5, "rights": ["read"]},
    {"kind": ["fs"], "scope": "/x", "rights": ["read"]},
    {"scope": "/x", "rights": ["read"]},
    {"kind": "fs", "rights": ["read"]},
    {"kind": "fs", "scope": "/x"},
    # neither form
    None, 5, ["fs", "/x", "read"], b"fs:/x:read",
])
def test_parse_rejects(value: object) -> None:
    with pytest.raises(InvalidArgument):
        CapSpec.parse(value)


def test_a_host_tools_kind_is_an_open_set_with_its_own_scopes() -> None:
    """A well-formed kind that is not builtin is a host tool's (`host_scope`); it grants
    nothing by itself, and its scopes are exact, `prefix*`, `*suffix` or `*`."""
    cap = CapSpec.parse("email:*@example.com:send")
    assert (cap.kind, cap.scope, cap.rights) == ("email", "*@example.com", frozenset({"send"}))
    assert cap.covers("email", "send", "bob@example.com")
    assert not cap.covers("email", "send", "bob@notexample.com")
    assert not cap.covers("email", "read", "bob@example.com")
    assert not cap.covers("mail", "send", "bob@example.com")
    assert CapSpec.parse("email:bob@example.com:send").within(cap)
    assert not CapSpec.parse("email:*@sub.example.com:send").within(cap)  # another domain
    assert CapSpec.parse("web:*.sub.example.com:get").within(CapSpec.parse("web:*.example.com:get"))
    assert not CapSpec.parse("email:*.com:send").within(cap)
    assert not CapSpec.parse("email:bob*:send").within(cap)  # prefix inside suffix: no
    assert not CapSpec.parse("email:*:send").within(cap)
    assert CapSpec.parse("bank:acct-1*:transfer").within(CapSpec.parse("bank:acct-*:transfer"))
    # A builtin kind keeps its own closed rights and scope language.
    assert not CapSpec.parse("obj:*x:read").covers("obj", "read", "ax")


# -- decisions ------------------------------------------------------------------------------------


def table_with(*specs: CapSpec, pid: int = 1) -> tuple[CapabilityRegistry, CapabilityTable]:
    registry = CapabilityRegistry()
    for s in specs:
        registry.grant(pid, s)
    return registry, registry.table(pid)


def test_allow_and_no_capability() -> None:
    _, table = table_with(spec("fs:/data/**:read"))
    assert table.decide("fs", "read", "/data/x", now=NOW).scope == "/data/**"
    for kind, right, resource in [("fs", "write", "/data/x"), ("fs", "read", "/database"),
                                  ("obj", "read", "/data/x"), ("fs", "read", "/")]:
        with pytest.raises(NotCapable):
            table.decide(kind, right, resource, now=NOW)


def test_deny_wins_over_allow_in_any_order() -> None:
    deny = spec("fs:/data/secret/**:read", effect="deny")
    for order in [(spec("fs:/**:read"), deny), (deny, spec("fs:/**:read"))]:
        _, table = table_with(*order, spec("fs:/data/secret/x:read"))  # even an exact allow
        assert table.decide("fs", "read", "/data/public", now=NOW)
        with pytest.raises(NotCapable, match="denied"):
            table.decide("fs", "read", "/data/secret/x", now=NOW)
        with pytest.raises(NotCapable, match="denied"):
            table.check_path("read", VirtualPath(("data", "secret", "x")), root=(),
                             locate=lambda p: (p, None), identify=lambda p: None, now=NOW)
    # a deny rule also wins over an `ask` and over a grant bound to these exact arguments
    registry, table = table_with(deny, spec("fs:/**:read", effect="ask"))
    registry.grant(1, spec("fs:/data/secret/x:read", uses=1), args_hash="h")
    with pytest.raises(NotCapable):
        table.decide("fs", "read", "/data/secret/x", now=NOW, args_hash="h")


def test_deny_on_resolved_path_wins() -> None:
    """A path allowed as named but resolving (through a symlink) into a denied tree."""
    _, table = table_with(spec("fs:/**:read"), spec("fs:/private/**:read", effect="deny"))
    with pytest.raises(NotCapable):
        table.check_path("read", VirtualPath(("data", "link")), root=(),
                         locate=lambda p: (VirtualPath(("private", "key")), None),
                         identify=lambda p: None, now=NOW)


def test_ask_needs_approval() -> None:
    _, table = table_with(spec("fs:/data/**:write", effect="ask"))
    with pytest.raises(NeedsApproval) as caught:
        table.decide("fs", "write", "/data/x", now=NOW)
    assert (caught.value.kind, caught.value.right, caught.value.resource) == \
        ("fs", "write", "/data/x")
    assert caught.value.cap.effect == "ask"
    # an allow anywhere wins over the ask
    _, table = table_with(spec("fs:/data/**:write", effect="ask"), spec("fs:/data/x:write"))
    assert table.decide("fs", "write", "/data/x", now=NOW).effect == "allow"


async def test_ask_is_never_an_allow_without_an_answer(kernel: Kernel) -> None:
    """Only an `ask` capability covers the write: with nobody answering, it is refused
    (`ApprovalDenied`) or left waiting for a person, never carried out, and it is audited."""
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=[{"kind": "fs", "scope": "/data/**",
                                       "rights": ["write"], "effect": "ask"}])
    outcome = "waiting"
    with trio.move_on_after(0.5):
        try:
            await kernel.call_tool(pid, "write_file", {"path": "/data/x", "data": "x"})
            outcome = "allowed"
        except ApprovalDenied:
            outcome = "denied"
    assert outcome != "allowed"
    assert not (Path(kernel.fs.root) / "data" / "x").exists()
    records = audit_of(kernel, pid, syscall="fs.write")
    assert records, "the request for approval left no audit record"
    assert not [r for r in records if r["phase"] in ("intent", "outcome")]
    assert records[0]["cap_id"] == kernel.capabilities(pid)[0]["id"]


def test_expiry() -> None:
    _, table = table_with(spec("fs:/data/**:read", expires=NOW + 10))
    assert table.decide("fs", "read", "/data/x", now=NOW + 9.999)
    for when in (NOW + 10, NOW + 11):
        with pytest.raises(NotCapable):
            table.decide("fs", "read", "/data/x", now=when)
    # an expired deny rule no longer denies
    _, table = table_with(spec("fs:/**:read"), spec("fs:/data/**:read", effect="deny",
                                                    expires=NOW))
    assert table.decide("fs", "read", "/data/x", now=NOW + 1)


async def test_expiry_in_a_process(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    async with Kernel.open(tmp_path / "k.db", clock=clock) as kernel:
        await open_image(kernel)
        (Path(kernel.fs.root) / "f.txt").write_text("hello")
        pid = kernel.spawn("agent", caps=[{"kind": "fs", "scope": "/**", "rights": ["read"],
                                           "expires": NOW + 60}])
        assert await kernel.call_tool(pid, "read_file", {"path": "/f.txt"}) == "hello"
        clock.advance(60)
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/f.txt"})
        assert last_error(kernel, pid, "fs.read")["phase"] == "denied"


def test_counted_uses_spent_exactly() -> None:
    registry, table = table_with(spec("fs:/data/**:read", uses=3))
    cap = table.decide("fs", "read", "/data/x", now=NOW)
    decision = table.check("fs", "read", "/data/x", now=NOW)
    assert decision.spends is not None and decision.spends.id == cap.id
    remaining = registry.spend(cap)
    assert remaining is not None and remaining.uses == 2
    assert table.decide("fs", "read", "/data/x", now=NOW).uses == 2
    remaining = registry.spend(cap)
    assert remaining is not None and remaining.uses == 1
    assert registry.spend(cap) is None
    assert len(table) == 0
    with pytest.raises(NotFound):
        registry.get(cap.id)
    with pytest.raises(NotCapable):  # a stale copy spends nothing more
        registry.spend(cap)
    with pytest.raises(NotCapable):
        table.decide("fs", "read", "/data/x", now=NOW)
    # a standing capability is never "spent", and is preferred to a counted one
    registry, table = table_with(spec("fs:/data/**:read", uses=1), spec("fs:/**:read"))
    assert table.check("fs", "read", "/data/x", now=NOW).spends is None
    with pytest.raises(NotCapable):
        registry.spend(table.decide("fs", "read", "/data/x", now=NOW))


async def test_counted_uses_in_a_process(kernel: Kernel) -> None:
    await open_image(kernel)
    (Path(kernel.fs.root) / "f.txt").write_text("x")
    pid = kernel.spawn("agent", caps=[{"kind": "fs", "scope": "/f.txt", "rights": ["read"],
                                       "uses": 2}])
    cap_id = kernel.capabilities(pid)[0]["id"]
    for left in (1, None):
        assert await kernel.call_tool(pid, "read_file", {"path": "/f.txt"}) == "x"
        stored = {c.id: c for _, c in kernel.store.load_capabilities()}
        assert (stored[cap_id].uses if cap_id in stored else None) == left
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/f.txt"})
    intents = audit_of(kernel, pid, phase="intent", syscall="fs.read")
    assert len(intents) == 2 and all(r["cap_id"] == cap_id for r in intents)
    assert last_error(kernel, pid, "fs.read")["phase"] == "denied"


def test_args_bound_capability() -> None:
    registry, table = table_with()
    registry.grant(1, spec("fs:/data/x:write", uses=1), args_hash="abc")
    assert table.decide("fs", "write", "/data/x", now=NOW, args_hash="abc")
    for other in (None, "abd"):
        with pytest.raises(NotCapable):
            table.decide("fs", "write", "/data/x", now=NOW, args_hash=other)
    # a grant bound to arguments cannot be attenuated into a general one
    with pytest.raises(NotCapable, match="escalation"):
        registry.derive(1, 2, spec("fs:/data/x:write", uses=1))


async def test_args_bound_capability_in_a_process(kernel: Kernel) -> None:
    await open_image(kernel)
    (Path(kernel.fs.root) / "f.txt").write_text("content")
    pid = kernel.spawn("agent")
    args = {"path": "/f.txt"}
    entry = kernel.caps.grant(pid, spec("fs:/f.txt:read", uses=1), args_hash=args_hash(args))
    kernel.store.insert_capabilities([entry])
    with pytest.raises(NotCapable):  # the same file, other arguments
        await kernel.call_tool(pid, "read_file", {"path": "/f.txt", "offset": 1})
    assert await kernel.call_tool(pid, "read_file", args) == "content"
    with pytest.raises(NotCapable):  # used exactly once
        await kernel.call_tool(pid, "read_file", args)
    assert [r["phase"] for r in audit_of(kernel, pid, syscall="fs.read")] == \
        ["denied", "intent", "outcome", "denied"]


def test_manifests_narrow() -> None:
    _, table = table_with(spec("fs:/**:read,write"))
    narrow = ((spec("fs:/data/**:read"),),)
    assert table.decide("fs", "read", "/data/x", now=NOW, manifests=narrow)
    for right, resource in [("read", "/etc/x"), ("write", "/data/x")]:
        with pytest.raises(NotCapable, match="manifest"):
            table.decide("fs", right, resource, now=NOW, manifests=narrow)
    # every manifest in the chain narrows: the intersection, never the union
    chain = ((spec("fs:/data/**:read"),), (spec("fs:/data/pub/**:read"),))
    assert table.decide("fs", "read", "/data/pub/x", now=NOW, manifests=chain)
    with pytest.raises(NotCapable):
        table.decide("fs", "read", "/data/x", now=NOW, manifests=chain)
    # a manifest never grants: the process must still hold the capability
    _, table = table_with(spec("fs:/data/**:read"))
    with pytest.raises(NotCapable):
        table.decide("fs", "read", "/etc/x", now=NOW, manifests=((spec("fs:/**:read"),),))
    # an empty manifest allows nothing
    with pytest.raises(NotCapable):
        table.decide("fs", "read", "/data/x", now=NOW, manifests=((),))


# -- attenuation ----------------------------------------------------------------------------------


def test_derive_narrower() -> None:
    registry, _ = table_with(spec("fs:/data/**:read,write", expires=NOW + 100))
    for narrower in [
        spec("fs:/data/**:read,write", expires=NOW + 100),
        spec("fs:/data/sub/**:read", expires=NOW + 50),
        spec("fs:/data/x:write", expires=NOW + 1, uses=2),
        spec("fs:/data/**:read", effect="ask", expires=NOW + 100),
        spec("fs:/data/**:read", effect="deny", expires=NOW + 100),
    ]:
        _, cap = registry.derive(1, 2, narrower)
        assert cap.owner == 2 and cap.parent == registry.table(1).caps()[0].id
        assert cap.scope == narrower.scope and cap.rights == narrower.rights


@pytest.mark.parametrize(("held", "wanted"), [
    (spec("fs:/data/**:read"), spec("fs:/**:read")),                       # wider scope
    (spec("fs:/data/**:read"), spec("fs:/database/**:read")),              # sibling prefix
    (spec("fs:/data/**:read"), spec("fs:/data*:read")),                    # name pattern
    (spec("fs:/data/x:read"), spec("fs:/data/x/**:read")),                 # exact → subtree
    (spec("fs:/data/**:read"), spec("fs:/data/**:read,write")),            # extra right
    (spec("fs:/data/**:read"), spec("obj:/data/**:read")),                 # other kind
    (spec("fs:/data/**:read", effect="ask"), spec("fs:/data/**:read")),    # ask → allow
    (spec("fs:/data/**:read", expires=NOW), spec("fs:/data/**:read")),     # no expiry
    (spec("fs:/data/**:read", expires=NOW), spec("fs:/data/**:read", expires=NOW + 1)),
    (spec("fs:/data/**:read", expires=NOW), spec("fs:/data/**:read", expires=math.inf)),
    (spec("fs:/data/**:read", uses=2), spec("fs:/data/**:read")),          # unlimited uses
    (spec("fs:/data/**:read", uses=2), spec("fs:/data/**:read", uses=3)),  # more uses
    (spec("fs:/**:read", effect="deny"), spec("fs:/data/**:read")),        # from a deny
])
def test_derive_wider_is_escalation(held: CapSpec, wanted: CapSpec) -> None:
    registry, _ = table_with(held)
    with pytest.raises(NotCapable, match="escalation"):
        registry.derive(1, 2, wanted)
    assert len(registry.table(2)) == 0


def test_a_bool_is_neither_uses_nor_an_expiry_when_made_directly() -> None:
    for fields in ({"uses": True}, {"uses": False}, {"expires": True}):
        with pytest.raises(InvalidArgument):
            CapSpec("fs", "/data/**", frozenset({"read"}), **fields)  # type: ignore[arg-type]
    assert CapSpec("fs", "/data/**", frozenset({"read"}), uses=1, expires=5).uses == 1


def test_nan_expiry_cannot_sneak_past_within() -> None:
    """NaN compares false with everything: without a guard a child could turn an expiring
    capability into one that never expires (and SQLite stores NaN as NULL: no expiry)."""
    with pytest.raises(InvalidArgument):
        CapSpec("fs", "/data/**", frozenset({"read"}), expires=math.nan)
    with pytest.raises(InvalidArgument):
        CapSpec.parse({"kind": "fs", "scope": "/data/**", "rights": ["read"],
                       "expires": float("nan")})


def test_derive_from_a_named_handle_only() -> None:
    registry, table = table_with(spec("fs:/data/**:read"), spec("fs:/etc/**:read"))
    data_handle = next(h for h, c in table if c.scope == "/data/**")
    with pytest.raises(NotCapable):  # /etc is held, but not through this handle
        registry.derive(1, 2, spec("fs:/etc/x:read"), from_handle=data_handle)
    _, cap = registry.derive(1, 2, spec("fs:/data/x:read"), from_handle=data_handle)
    assert cap.parent == table.get(data_handle).id


# -- children through the kernel -------------------------------------------------------------------

PARENT_CAPS = ("fs:/data/**:read,write", "proc:*:spawn",
               {"kind": "fs", "scope": "/data/secret/**", "rights": ["read", "write"],
                "effect": "deny"})


@pytest.fixture
async def family(kernel: Kernel) -> tuple[Kernel, int, Path]:
    await open_image(kernel)
    root = Path(kernel.fs.root)
    for name, text in [("data/pub/a.txt", "public"), ("data/secret/key", "s3cret"),
                       ("data/b.txt", "b"), ("etc/passwd", "root:x")]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return kernel, kernel.spawn("agent", caps=PARENT_CAPS), root


async def spawn_child(kernel: Kernel, parent: int, caps: list[Any], **extra: Any) -> int:
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": caps, **extra})
    assert isinstance(child, int)
    return child


async def test_child_gets_only_the_subset_it_asked_for(family: tuple[Kernel, int, Path]) -> None:
    kernel, parent, _ = family
    child = await spawn_child(kernel, parent, ["fs:/data/pub/**:read"])
    assert await kernel.call_tool(child, "read_file", {"path": "/data/pub/a.txt"}) == "public"
    for tool, args in [("read_file", {"path": "/data/b.txt"}),
                       ("write_file", {"path": "/data/pub/a.txt", "data": "x"}),
                       ("read_file", {"path": "/etc/passwd"}),
                       ("spawn", {"image": "agent"})]:
        with pytest.raises(NotCapable):
            await kernel.call_tool(child, tool, args)
    assert len(audit_of(kernel, child, phase="denied")) == 4
    held = {(c["kind"], c["scope"], tuple(c["rights"]), c["effect"])
            for c in kernel.capabilities(child)}
    assert held == {("fs", "/data/pub/**", ("read",), "allow"),
                    ("fs", "/data/secret/**", ("read", "write"), "deny"),
                    ("obj", f"proc/{child}", ("read", "write"), "allow")}
    parent_ids = {c["id"] for c in kernel.capabilities(parent)}
    assert all(c.get("parent") in parent_ids for c in kernel.capabilities(child)
               if c["kind"] == "fs")


@pytest.mark.parametrize("wanted", [
    "fs:/**:read",                                                      # wider scope
    "fs:/etc/**:read",                                                  # elsewhere
    "fs:/data*:read",                                                   # name pattern
    "fs:/data/**:read,write",                                           # fine ...
    "obj:*:read",                                                       # another kind
    "proc:*:spawn,signal",                                              # extra right
    {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 0},  # invalid
])
async def test_child_asking_for_more_is_not_capable_and_audited(
        family: tuple[Kernel, int, Path], wanted: Any) -> None:
    kernel, parent, _ = family
    # "fs:/data/**:read,write" is fine alone, but not beside one capability the parent
    # lacks: a spawn is all or nothing
    extra = ["fs:/etc/**:read"] if wanted == "fs:/data/**:read,write" else []
    caps = [wanted, *extra]
    before = len(kernel.ps())
    expected = InvalidArgument if isinstance(wanted, dict) else NotCapable
    with pytest.raises(expected):
        await spawn_child(kernel, parent, caps)
    assert len(kernel.ps()) == before, "a refused spawn must not create a process"
    failure = last_error(kernel, parent, "proc.spawn")
    assert failure["detail"]["error"] == expected.code


@pytest.mark.parametrize("wanted", [
    {"kind": "fs", "scope": "/data/**", "rights": ["read"]},             # drop the ask
    {"kind": "fs", "scope": "/data/**", "rights": ["read"], "effect": "ask",
     "expires": NOW + 10_000},                                             # outlive it
    {"kind": "fs", "scope": "/data/**", "rights": ["read"], "effect": "ask"},  # never expire
])
async def test_child_cannot_weaken_ask_or_extend_life(tmp_path: Path, wanted: Any) -> None:
    clock = FakeClock(NOW)
    async with Kernel.open(tmp_path / "k.db", clock=clock) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[
            "proc:*:spawn", {"kind": "fs", "scope": "/data/**", "rights": ["read"],
                             "effect": "ask", "expires": NOW + 100}])
        with pytest.raises(NotCapable, match="escalation"):
            await spawn_child(kernel, parent, [wanted])
        assert last_error(kernel, parent, "proc.spawn")["detail"]["error"] == "NOT_CAPABLE"
        ok = await spawn_child(kernel, parent, [{**wanted, "effect": "ask",
                                                 "expires": NOW + 50}])
        assert kernel.capabilities(ok)[0]["expires"] == NOW + 50


async def test_child_inherits_deny_rules(family: tuple[Kernel, int, Path]) -> None:
    kernel, parent, root = family
    # the child asks for all of /data (within the parent's allow) and nothing about secrets
    child = await spawn_child(kernel, parent, ["fs:/data/**:read,write", "proc:*:spawn"])
    with pytest.raises(NotCapable, match="denied"):
        await kernel.call_tool(child, "read_file", {"path": "/data/secret/key"})
    with pytest.raises(NotCapable):
        await kernel.call_tool(child, "write_file", {"path": "/data/secret/new", "data": "x"})
    assert not (root / "data" / "secret" / "new").exists()
    # and so does a grandchild: no lineage routes around a deny rule
    grandchild = await spawn_child(kernel, child, ["fs:/data/**:read"])
    with pytest.raises(NotCapable, match="denied"):
        await kernel.call_tool(grandchild, "read_file", {"path": "/data/secret/key"})
    for pid in (child, grandchild):
        denied = audit_of(kernel, pid, phase="denied", syscall="fs.read")
        assert denied and denied[0]["resource"] == "/data/secret/key"


async def test_spawned_child_root_stays_inside_parent_root(
        family: tuple[Kernel, int, Path]) -> None:
    kernel, parent, _ = family
    child = await spawn_child(kernel, parent, ["fs:/data/pub/**:read"], root="/data/pub")
    assert await kernel.call_tool(child, "read_file", {"path": "/a.txt"}) == "public"
    assert kernel.process(child).root == "/data/pub"
    with pytest.raises(NotCapable):
        await spawn_child(kernel, parent, [], root="/../..")


# -- revocation ---------------------------------------------------------------------------------


async def test_revoke_revokes_everything_derived(family: tuple[Kernel, int, Path]) -> None:
    kernel, parent, _ = family
    child = await spawn_child(kernel, parent, ["fs:/data/**:read", "proc:*:spawn"])
    grandchild = await spawn_child(kernel, child, ["fs:/data/pub/**:read"])
    for pid in (parent, child, grandchild):
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/a.txt"})
    root_cap = next(c for c in kernel.capabilities(parent) if c["scope"] == "/data/**")
    gone = kernel.revoke(root_cap["id"])
    assert len(gone) == 3 and {c.owner for c in gone} == {parent, child, grandchild}
    for pid in (parent, child, grandchild):
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/a.txt"})
        assert last_error(kernel, pid, "fs.read")["phase"] == "denied"
        assert all(c["kind"] != "fs" or c["effect"] == "deny"
                   for c in kernel.capabilities(pid))
    # the revocation is durable and audited
    stored = {c.id for _, c in kernel.store.load_capabilities()}
    assert not stored & {c.id for c in gone}
    admin = [r for r in kernel.audit() if r["phase"] == "admin"]
    assert admin[-1]["syscall"] == "caps.revoke" and admin[-1]["resource"] == root_cap["id"]
    assert sorted(admin[-1]["detail"]["revoked"]) == sorted(c.id for c in gone)
    # the rest is untouched: the spawn capability still works
    await spawn_child(kernel, parent, [])
    with pytest.raises(NotFound):
        kernel.revoke(root_cap["id"])


def test_revoke_reaches_through_a_used_up_capability() -> None:
    """A (standing) → B (2 uses, child) → D (1 use, grandchild). When B is used up,
    revoking A must still take D."""
    registry, _ = table_with(spec("fs:/data/**:read"))
    a = registry.table(1).caps()[0]
    _, b = registry.derive(1, 2, spec("fs:/data/**:read", uses=2))
    _, d = registry.derive(2, 3, spec("fs:/data/x:read", uses=1))
    registry.spend(b)
    kept = registry.spend(b)  # kept for its lineage, allowing nothing
    assert kept is not None and kept.uses == 0 and d.parent == b.id
    with pytest.raises(NotCapable):
        registry.table(2).decide("fs", "read", "/data/x", now=NOW)
    gone = registry.revoke(a.id)
    assert {c.id for c in gone} == {a.id, b.id, d.id}
    with pytest.raises(NotCapable):
        registry.table(3).decide("fs", "read", "/data/x", now=NOW)


async def test_revoke_reaches_through_a_used_up_capability_across_reopen(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        (Path(kernel.fs.root) / "data").mkdir()
        (Path(kernel.fs.root) / "data" / "x").write_text("x")
        parent = kernel.spawn("agent", caps=["fs:/data/**:read", "proc:*:spawn"])
        a = next(c["id"] for c in kernel.capabilities(parent) if c["scope"] == "/data/**")
        child = await spawn_child(kernel, parent, [
            {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 2},
            "proc:*:spawn"])
        grandchild = await spawn_child(kernel, child, [
            {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 1}])
        # Counted uses are split: the grandchild took one, the child spends the other.
        await kernel.call_tool(child, "read_file", {"path": "/data/x"})
        with pytest.raises(NotCapable):
            await kernel.call_tool(child, "read_file", {"path": "/data/x"})
    async with Kernel.open(db_path) as kernel:
        kernel.revoke(a)
        with pytest.raises(NotCapable):
            await kernel.call_tool(grandchild, "read_file", {"path": "/data/x"})
        assert last_error(kernel, grandchild, "fs.read")["phase"] == "denied"


async def test_children_do_not_multiply_counted_uses(kernel: Kernel) -> None:
    await open_image(kernel)
    (Path(kernel.fs.root) / "f.txt").write_text("x")
    parent = kernel.spawn("agent", caps=["proc:*:spawn", {"kind": "fs", "scope": "/f.txt",
                                                          "rights": ["read"], "uses": 1}])
    one_use = {"kind": "fs", "scope": "/f.txt", "rights": ["read"], "uses": 1}
    readers = [parent]
    for _ in range(2):
        with contextlib.suppress(NotCapable):
            readers.append(await spawn_child(kernel, parent, [one_use]))
    reads = 0
    for pid in readers:
        try:
            await kernel.call_tool(pid, "read_file", {"path": "/f.txt"})
            reads += 1
        except NotCapable:
            pass
    assert reads <= 1


# -- handles ---------------------------------------------------------------------------------------


def test_handles_are_unguessable() -> None:
    handles = [new_handle() for _ in range(4000)]
    assert len(set(handles)) == len(handles)
    for handle in handles:
        assert handle.startswith("h_")
        body = handle[2:]
        assert len(body) >= 24 and int(body, 16) >= 0  # at least 96 bits of hex
    # no structure to guess from: every hex digit turns up in every position
    bodies = [h[2:] for h in handles]
    for position in range(24):
        assert len({b[position] for b in bodies}) == 16
    # and neighbouring handles share no long prefix (not a counter)
    shared = [len(_common_prefix(a, b)) for a, b in itertools.pairwise(bodies)]
    assert max(shared) <= 8


def _common_prefix(a: str, b: str) -> str:
    out = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        out.append(x)
    return "".join(out)


async def test_handles_are_per_process(kernel: Kernel) -> None:
    await open_image(kernel)
    one = kernel.spawn("agent", caps=["fs:/**:read"])
    two = kernel.spawn("agent", caps=["fs:/tmp/**:read"])
    handle_one = kernel.capabilities(one)[0]["handle"]
    assert handle_one not in {c["handle"] for c in kernel.capabilities(two)}
    assert kernel.process(one).caps.get(handle_one).scope == "/**"
    with pytest.raises(NotFound):
        kernel.process(two).caps.get(handle_one)
    with pytest.raises(NotFound):  # deriving through another process's handle: nothing
        kernel.caps.derive(two, 99, spec("fs:/etc/x:read"), from_handle=handle_one)
    for junk in (None, 1, "", "h_" + "0" * 24, handle_one.upper(), [handle_one]):
        with pytest.raises(NotFound):
            kernel.process(one).caps.get(junk)
    ids = [c["id"] for c in kernel.capabilities(one)]
    assert all(i.startswith("cap_") and len(i) >= 28 for i in ids)


# -- proof of check -----------------------------------------------------------------------------


def test_proof_cannot_be_minted_outside_the_check() -> None:
    for token in (None, object(), "_MINT", Proof, 0):
        with pytest.raises(TypeError):
            Proof(token, "fs", "read", "/x", "cap_x")
        with pytest.raises(TypeError):
            CheckedPath(token, "read", "/x", "cap_x", ("x",), False)


def test_provider_accepts_only_a_checked_path(tmp_path: Path) -> None:
    fs = LocalFs(tmp_path / "root")
    (tmp_path / "root" / "x").write_text("secret")
    _, table = table_with(spec("fs:/**:read,write"))
    plain_proof = table.check("fs", "read", "/x", now=NOW).proof
    assert type(plain_proof) is Proof

    class Forged(CheckedPath):
        def __new__(cls) -> Forged:  # skips the mint check entirely
            return tuple.__new__(cls, ("fs", "read", "/x", "cap_x", "/**", ("x",), False, None,
                                       False))

    forged = Forged()
    for bad in ("/x", "x", VirtualPath(("x",)), ("x",), plain_proof, forged, None):
        for call in (lambda p: fs.read(p, 0, None),
                     lambda p: fs.write(p, b"y", append=False, exclusive=False),
                     fs.listdir, fs.stat,
                     lambda p: fs.mkdir(p, parents=True),
                     lambda p: fs.remove(p, recursive=True)):
            with pytest.raises(TypeError):
                call(bad)
    assert (tmp_path / "root" / "x").read_text() == "secret"
    # the real thing works
    checked = table.check_path("read", VirtualPath(("x",)), root=(), locate=fs.locate,
                               identify=fs.identify, now=NOW).proof
    assert isinstance(checked, CheckedPath) and fs.read(checked, 0, None) == b"secret"


def test_a_proof_cannot_be_changed_once_minted(tmp_path: Path) -> None:
    """Issue 14, item 3: a checked path cannot be pointed elsewhere between check and use, by
    assignment, by `object.__setattr__`, by deleting a field, by adding one, or by copying it
    (a copy would be a proof the check never minted)."""
    import copy
    import pickle

    fs = LocalFs(tmp_path / "root")
    (tmp_path / "root" / "public.txt").write_text("public")
    (tmp_path / "root" / "secret.txt").write_text("secret")
    _, table = table_with(spec("fs:/public.txt:read,write"))
    checked = table.check_path("read", VirtualPath(("public.txt",)), root=(),
                               locate=fs.locate, identify=fs.identify, now=NOW).proof
    plain = table.check("fs", "read", "/public.txt", now=NOW).proof
    changes: list[tuple[Proof, str, object]] = [
        (checked, "parts", ("secret.txt",)), (checked, "resource", "/secret.txt"),
        (checked, "identity", None), (checked, "linked", True), (checked, "want_dir", True),
        (checked, "cap_id", "cap_other"), (checked, "right", "write"), (checked, "kind", "obj"),
        (checked, "scope", "/**"),
        (plain, "resource", "/secret.txt"), (plain, "cap_id", "cap_other")]
    for proof, name, value in changes:
        with pytest.raises(AttributeError):
            setattr(proof, name, value)
        with pytest.raises(AttributeError):
            object.__setattr__(proof, name, value)
        with pytest.raises(AttributeError):
            delattr(proof, name)
    for proof in (checked, plain):
        with pytest.raises(AttributeError):
            proof.extra = "x"  # type: ignore[union-attr]
        with pytest.raises(TypeError):
            copy.copy(proof)
        with pytest.raises(TypeError):
            pickle.loads(pickle.dumps(proof))
    assert checked.parts == ("public.txt",) and checked.resource == "/public.txt"
    assert fs.read(checked, 0, None) == b"public"


def test_capability_fields_are_frozen() -> None:
    _registry, table = table_with(spec("fs:/data/**:read"))
    cap = table.caps()[0]
    assert isinstance(cap, Capability)
    with pytest.raises(AttributeError):
        cap.scope = "/**"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cap.rights = frozenset({"read", "write"})  # type: ignore[misc]
