"""Per-object scopes (issue 14, item 7): a capability names one object or a pattern of objects
inside a namespace (`obj:shared/api_key:read`) as well as a whole namespace, and a listing never
shows an object outside what the caller may read."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import InvalidArgument, Kernel, NotCapable
from broker.caps import CapSpec
from broker.caps.listing import check_listing
from broker.caps.obj_scope import is_subscope, matches, object_resource, reaches
from tests.conftest import open_image

SHARED = {"api_key": "k-123", "api_url": "https://api", "db_password": "hunter2"}
DENY_PASSWORD = {"kind": "obj", "scope": "shared/db_password", "rights": ["read"],
                 "effect": "deny"}


async def _shared(kernel: Kernel) -> None:
    await open_image(kernel)
    owner = kernel.spawn("agent", caps=["obj:shared:read,write"])
    for name, value in SHARED.items():
        await kernel.call_tool(owner, "put_object", {"ns": "shared", "name": name,
                                                     "type": "json", "value": value})


async def _get(kernel: Kernel, pid: int, name: str) -> Any:
    return (await kernel.call_tool(pid, "get_object", {"ns": "shared", "name": name}))["value"]


async def _names(kernel: Kernel, pid: int, **args: Any) -> list[str]:
    return [o["name"] for o in await kernel.call_tool(pid, "list_objects",
                                                      {"ns": "shared", **args})]


async def _refused(kernel: Kernel, pid: int, tool: str, **args: Any) -> dict[str, Any]:
    before = kernel.store.head_seq
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, tool, args)
    [record] = [r for r in kernel.audit(pid) if r["seq"] > before
                and r["syscall"].startswith("obj.")]
    assert record["phase"] == "denied" and record["detail"]["error"] == "NOT_CAPABLE"
    return record


async def test_one_object_and_not_its_neighbour(kernel: Kernel) -> None:
    await _shared(kernel)
    pid = kernel.spawn("agent", caps=["obj:shared/api_key:read"])
    assert await _get(kernel, pid, "api_key") == "k-123"
    record = await _refused(kernel, pid, "get_object", ns="shared", name="db_password")
    assert record["resource"] == "shared/db_password"
    # Read only: the one object cannot be written either.
    record = await _refused(kernel, pid, "put_object", ns="shared", name="api_key",
                            type="json", value="mine")
    assert record["resource"] == "shared/api_key"
    assert await _get(kernel, pid, "api_key") == "k-123"


async def test_a_listing_shows_only_the_objects_in_scope(kernel: Kernel) -> None:
    await _shared(kernel)
    one = kernel.spawn("agent", caps=["obj:shared/api_key:read"])
    assert await _names(kernel, one) == ["api_key"]
    assert await _names(kernel, one, prefix="db") == []  # a prefix reveals nothing either
    pattern = kernel.spawn("agent", caps=["obj:shared/api_*:read"])
    assert await _names(kernel, pattern) == ["api_key", "api_url"]
    whole = kernel.spawn("agent", caps=["obj:shared:read"])
    assert await _names(kernel, whole) == ["api_key", "api_url", "db_password"]
    [listing] = [r for r in kernel.audit(one) if r["syscall"] == "obj.list"
                 and r["phase"] == "intent+outcome"][-1:]
    assert "db_password" not in str(listing["detail"])


async def test_a_deny_rule_on_one_object_hides_it_from_a_namespace_grant(
        kernel: Kernel) -> None:
    await _shared(kernel)
    pid = kernel.spawn("agent", caps=["obj:shared:read", DENY_PASSWORD])
    assert await _names(kernel, pid) == ["api_key", "api_url"]
    record = await _refused(kernel, pid, "get_object", ns="shared", name="db_password")
    assert record["resource"] == "shared/db_password"
    assert await _get(kernel, pid, "api_url") == "https://api"


async def test_listing_a_namespace_nothing_reaches_is_denied(kernel: Kernel) -> None:
    await _shared(kernel)
    pid = kernel.spawn("agent", caps=["obj:other/api_key:read", "obj:shared2:read"])
    record = await _refused(kernel, pid, "list_objects", ns="shared")
    assert record["resource"] == "shared"
    denied_ns = kernel.spawn("agent", caps=["obj:shared/api_key:read",
                                            {"kind": "obj", "scope": "shared", "rights": ["read"],
                                             "effect": "deny"}])
    await _refused(kernel, denied_ns, "list_objects", ns="shared")
    assert await kernel.call_tool(pid, "list_objects", {}) == []  # its own namespace


async def test_a_child_gets_at_most_the_objects_its_parent_holds(kernel: Kernel) -> None:
    await _shared(kernel)
    parent = kernel.spawn("agent", caps=["obj:shared/api_key:read", "proc:*:spawn"])
    before = kernel.store.head_seq
    with pytest.raises(NotCapable, match="escalation"):
        await kernel.call_tool(parent, "spawn", {"image": "agent",
                                                 "caps": ["obj:shared:read"]})
    with pytest.raises(NotCapable, match="escalation"):
        await kernel.call_tool(parent, "spawn", {"image": "agent",
                                                 "caps": ["obj:shared/api_*:read"]})
    denied = [r for r in kernel.audit(parent) if r["seq"] > before and r["phase"] == "denied"]
    assert [r["syscall"] for r in denied] == ["proc.spawn", "proc.spawn"]
    child = await kernel.call_tool(parent, "spawn", {"image": "agent",
                                                     "caps": ["obj:shared/api_key:read"]})
    assert await _get(kernel, child, "api_key") == "k-123"
    wide = kernel.spawn("agent", caps=["obj:shared:read", "proc:*:spawn"])
    narrow = await kernel.call_tool(wide, "spawn", {"image": "agent",
                                                    "caps": ["obj:shared/api_*:read"]})
    assert await _names(kernel, narrow) == ["api_key", "api_url"]


async def test_a_manifest_narrows_a_listing_to_its_objects(kernel: Kernel) -> None:
    await _shared(kernel)
    pid = kernel.spawn("agent", caps=["obj:shared:read"])
    table = kernel.process(pid).caps
    manifests = ((CapSpec.parse("obj:shared/api_url:read"),),)
    proof: Any = check_listing(table, "obj", "read", "shared",
                               lambda name: object_resource("shared", name), reaches, now=0.0,
                               manifests=manifests).proof
    assert [n for n in SHARED if proof.visible(n)] == ["api_url"]
    outside = ((CapSpec.parse("obj:team:read"),),)
    with pytest.raises(NotCapable, match="manifest"):
        check_listing(table, "obj", "read", "shared",
                      lambda name: object_resource("shared", name), reaches, now=0.0,
                      manifests=outside)


@pytest.mark.parametrize("ns", ["proc", "a/b", "proc/0", "proc/12/x", "/shared", "shared/"])
async def test_namespaces_that_would_blur_object_scopes_are_invalid(kernel: Kernel,
                                                                    ns: str) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["obj:*:read,write"])
    with pytest.raises(InvalidArgument):
        await kernel.dispatcher.run(kernel.process(pid), None, "obj.put",
                                    {"ns": ns, "name": "x", "type": "json", "value": 1})
    assert [r["phase"] for r in kernel.audit(pid) if r["syscall"] == "obj.put"] == ["rejected"]


# -- the scope language ----------------------------------------------------------------------

@pytest.mark.parametrize(("scope", "resource", "covered"), [
    ("shared", "shared", True), ("shared", "shared/api_key", True),
    ("shared", "shared2/x", False), ("shared", "shared.x/y", False),
    ("shared/api_key", "shared/api_key", True), ("shared/api_key", "shared", False),
    ("shared/api_key", "shared/api_key2", False), ("shared/api_*", "shared/api_url", True),
    ("shared/api_*", "shared", False), ("shared/api_*", "shared/db", False),
    ("proc/12", "proc/12/notes", True), ("proc/12", "proc/123/notes", False),
    ("proc/12/notes", "proc/12/notes", True), ("proc/12/notes", "proc/12", False),
    ("team.*", "team.a/x", True), ("team.*", "team.a", True), ("*", "anything/x", True),
    ("shared/**", "shared/x", True), ("shared/**", "shared", True),
])
def test_scope_matches(scope: str, resource: str, covered: bool) -> None:
    assert matches(scope, resource) is covered


@pytest.mark.parametrize(("inner", "outer", "inside"), [
    ("shared/api_key", "shared", True), ("shared/api_*", "shared", True),
    ("shared", "shared/api_key", False), ("shared", "shared/*", False),
    ("shared/*", "shared", True), ("shared/api_*", "shared/a*", True),
    ("shared/a*", "shared/api_*", False), ("proc/12/x", "proc/1*", True),
    ("shared", "*", True), ("*", "shared", False), ("shared/**", "shared", True),
    ("shared", "shared/**", True),
])
def test_scope_inside(inner: str, outer: str, inside: bool) -> None:
    assert is_subscope(inner, outer) is inside


_ALPHABET = st.sampled_from(["s", "a", "proc", "1", "/", "*", "**", ".", "_"])
_SCOPE = st.lists(_ALPHABET, min_size=1, max_size=5).map("".join)
_NS = st.sampled_from(["s", "sa", "a", "proc/1", "proc/11", "s.a"])
_NAME = st.lists(st.sampled_from(["s", "a", "1", "/", "*", "."]), min_size=1,
                 max_size=4).map("".join)


@settings(max_examples=1000, deadline=None)  # a small alphabet: 1000 cover it well
@given(inner=_SCOPE, outer=_SCOPE, ns=_NS, name=_NAME)
def test_inside_is_never_wider_and_reaches_never_misses(inner: str, outer: str, ns: str,
                                                        name: str) -> None:
    resource = object_resource(ns, name)
    if is_subscope(inner, outer):
        assert not matches(inner, resource) or matches(outer, resource)
        assert not matches(inner, ns) or matches(outer, ns)
    if matches(inner, resource):
        assert reaches(inner, ns)
