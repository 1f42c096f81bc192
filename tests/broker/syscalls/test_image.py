"""image primitives: a process registers images within its own authority (never wider: the
refusal is a denial in the audit, before any effect), its deny rules travel with them, versions
are kept; an image committed from a process's checkpoint carries its tools (run-time ones too)
and its planner, never its capabilities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, InvalidArgument, Kernel, NotCapable, NotFound
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from tests.conftest import open_image

MAKER_NEEDS = ("fs:/**:read,write", "image:*:register", "tool:*:register,call", "proc:*:spawn",
               "obj:*:read,write")
MAKER_TOOLS = ("read_file", "write_file", "register_image", "register_tool", "commit_image",
               "spawn", "wait")
DENY_SECRET = {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"], "effect": "deny"}


def fs_root(kernel: Kernel) -> Path:
    return Path(kernel.fs.root)  # type: ignore[attr-defined]


def audit_of(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall]


async def maker(kernel: Kernel, *caps: Any) -> int:
    await open_image(kernel, "maker", needs=MAKER_NEEDS, tools=MAKER_TOOLS)
    for d in ("public", "secret"):
        (fs_root(kernel) / "data" / d).mkdir(parents=True, exist_ok=True)
        (fs_root(kernel) / "data" / d / "f.txt").write_text(d)
    return kernel.spawn("maker", caps=list(caps) or [
        "fs:/data/**:read", "image:team.*:register", DENY_SECRET])


async def register(kernel: Kernel, pid: int, image: dict[str, Any]) -> Any:
    return await kernel.call_tool(pid, "register_image", {"image": image})


async def test_an_image_wider_than_the_caller_is_refused_and_audited(kernel: Kernel) -> None:
    pid = await maker(kernel)
    attempts: list[tuple[dict[str, Any], type[Exception], str]] = [
        # more than it holds: a wider path, another right, a kind it has nothing of
        ({"name": "team.all", "tools": ["read_file"], "needs": ["fs:/**:read"]},
         NotCapable, "more than process"),
        ({"name": "team.w", "needs": ["fs:/data/**:read,write"]}, NotCapable, "more than"),
        ({"name": "team.sh", "needs": ["shell:*:run"]}, NotCapable, "more than"),
        # a name its image capability does not cover
        ({"name": "other", "needs": ["fs:/data/**:read"]}, NotCapable, "no capability"),
        # a tool written in a language it may not register tools in
        ({"name": "team.code", "tools": [{"name": "t", "lang": "wat", "source": "(module)"}]},
         NotCapable, "no capability for tool:register"),
        # a model planner: it would reach a server with a key outside every capability
        ({"name": "team.model", "planner": {"kind": "openai", "base_url": "http://evil",
                                            "api_key_env": "AWS_SECRET_ACCESS_KEY"}},
         NotCapable, "planner reaches a model"),
    ]
    for image, error, message in attempts:
        with pytest.raises(error, match=message):
            await register(kernel, pid, image)
    refused = audit_of(kernel, pid, "image.register")
    assert [r["phase"] for r in refused] == ["denied"] * len(attempts)
    assert all(r["detail"]["error"] == "NOT_CAPABLE" for r in refused)
    assert [r["resource"] for r in refused] == [a[0]["name"] for a in attempts]
    for image, _, _ in attempts:
        with pytest.raises(NotFound):
            kernel.image(image["name"])

    # Bad content is a typed error too, before any effect.
    with pytest.raises(InvalidArgument):
        await register(kernel, pid, {"name": "team.bad", "tools": ["no_such_builtin"]})
    with pytest.raises(InvalidArgument):
        await register(kernel, pid, {"name": "team.bad", "needs": ["fs:/data/**:fly"]})
    kernel.define_type("note", {"type": "object"})
    with pytest.raises(Conflict):
        await register(kernel, pid, {"name": "team.bad", "types": {"note": {"type": "string"}}})
    assert kernel.images.types["note"] == {"type": "object"}
    assert [r["phase"] for r in audit_of(kernel, pid, "image.register")][-3:] == [
        "rejected"] * 3
    assert not [r for r in audit_of(kernel, pid, "image.register") if r["phase"] == "intent"]

    # The neighbour: an image within its authority registers, with its deny rule declared.
    done = await register(kernel, pid, {"name": "team.reader", "tools": ["read_file"],
                                        "needs": ["fs:/data/**:read"]})
    assert (done["name"], done["version"]) == ("team.reader", "1")
    assert done["denies"] == [{**DENY_SECRET, "rights": ["read"]}]
    image = kernel.image("team.reader")
    assert image.origin == {"registered_by": pid}
    assert [r["phase"] for r in audit_of(kernel, pid, "image.register")][-2:] == [
        "intent", "outcome"]


async def test_the_deny_rules_come_along_and_versions_are_kept(kernel: Kernel) -> None:
    pid = await maker(kernel)
    reader = {"name": "team.reader", "tools": ["read_file"], "needs": ["fs:/data/**:read"]}
    assert (await register(kernel, pid, reader))["version"] == "1"
    assert (await register(kernel, pid, reader))["version"] == "1"  # same content, same one
    wider_tools = {**reader, "tools": ["read_file", "stat"]}
    assert (await register(kernel, pid, wider_tools))["version"] == "2"
    assert kernel.image("team.reader").version == "2"
    assert kernel.image("team.reader", "1").tools == ("read_file",)

    # The host grants the whole declared need; the maker's deny rule still holds.
    child = kernel.spawn("team.reader", caps=["fs:/data/**:read"])
    assert await kernel.call_tool(child, "read_file", {"path": "/data/public/f.txt"}) == "public"
    with pytest.raises(NotCapable, match="denied by a rule"):
        await kernel.call_tool(child, "read_file", {"path": "/data/secret/f.txt"})
    denied = [r for r in audit_of(kernel, child, "fs.read") if r["phase"] == "denied"]
    assert [r["resource"] for r in denied] == ["/data/secret/f.txt"]
    # And a spawn wider than the image declares is refused, as for any image.
    with pytest.raises(NotCapable):
        kernel.spawn("team.reader", caps=["fs:/**:read"])


async def test_needs_stay_inside_the_calling_tools_manifest(tmp_path: Path) -> None:
    wasm = WasmSandbox(tmp_path / "wasm-cache")
    async with Kernel.open(tmp_path / "k.db", sandboxes=[wasm]) as kernel:
        pid = await maker(kernel, "fs:/data/**:read", "image:team.*:register",
                          "tool:wat:register,call")
        # A tool whose manifest allows only /data/public asks to register an image that
        # declares all of /data: the manifest narrows it, so that is refused.
        body = """
  (data (i32.const 1024) "image.register")
  (data (i32.const 1040) "image")
  (data (i32.const 1048) "name")
  (data (i32.const 1056) "team.x")
  (data (i32.const 1064) "needs")
  (data (i32.const 1072) "fs:/data/**:read")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 14))
    (call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1040) (i32.const 5))
    (call $mp_map (i32.const 2))
    (call $mp_str (i32.const 1048) (i32.const 4))
    (call $mp_str (i32.const 1056) (i32.const 6))
    (call $mp_str (i32.const 1064) (i32.const 5))
    (call $mp_array (i32.const 1))
    (call $mp_str (i32.const 1072) (i32.const 16))
    (drop (call $sys_call))
    (call $sys_response))"""
        await kernel.call_tool(pid, "register_tool", {
            "name": "maker_tool", "lang": "wat", "source": wasm_guest.module(body),
            "manifest": ["fs:/data/public/**:read", "image:team.*:register"]})
        with pytest.raises(NotCapable, match="manifest"):
            await kernel.call_tool(pid, "maker_tool", {})
        [refused] = audit_of(kernel, pid, "image.register")
        assert refused["phase"] == "denied" and refused["tool"] == "maker_tool"
        with pytest.raises(NotFound):
            kernel.image("team.x")


# -- image.commit ---------------------------------------------------------------------------

@pytest.fixture
async def wk(tmp_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(tmp_path / "libos.db",
                           sandboxes=[WasmSandbox(tmp_path / "wasm-cache")]) as kernel:
        yield kernel


async def test_a_committed_image_carries_tools_never_capabilities(wk: Kernel) -> None:
    pid = await maker(wk, "fs:/data/**:read", "tool:wat:register,call", "image:snap:register",
                      "proc:snap:spawn")
    registered = await wk.call_tool(pid, "register_tool", {
        "name": "wordcount", "lang": "wat", "source": wasm_guest.example("wordcount")})
    assert (await wk.call_tool(pid, "wordcount", {"path": "/data/secret/f.txt"}))["words"] == 1
    wk.checkpoint(pid)
    committed = await wk.call_tool(pid, "commit_image", {"name": "snap"})
    checkpoint = wk.store.checkpoint(pid)
    assert committed["origin"] == {"committed_from": {
        "pid": pid, "checkpoint": checkpoint["id"], "step": checkpoint["step"],
        "image": "maker:1"}, "by": pid}
    image = wk.image("snap")
    code = {t["name"]: t for t in image.tools if isinstance(t, dict)}
    assert code["wordcount"]["hash"] == registered["hash"]  # the run-time tool, by its source
    assert {t for t in image.tools if isinstance(t, str)} == set(MAKER_TOOLS)
    # Its needs are the source image's, narrowed to what the committer holds.
    assert {n.to_wire()["scope"] for n in image.needs} == {"/data/**", "wat", "snap"}
    assert [c["id"] for c in wk.checkpoints(pid) if c["pinned"]] == [checkpoint["id"]]

    # Run by the host with no grant: the same tool cannot read what the original could.
    bare = wk.spawn("snap")
    assert {c["kind"] for c in wk.capabilities(bare)} == {"obj"}  # only its own namespace
    for call in (("wordcount", {"path": "/data/secret/f.txt"}),
                 ("read_file", {"path": "/data/secret/f.txt"})):
        with pytest.raises(NotCapable):
            await wk.call_tool(bare, *call)
    denied = [r for r in audit_of(wk, bare, "fs.read") if r["phase"] == "denied"]
    assert len(denied) == 2 and {r["tool"] for r in denied} == {"wordcount", "read_file"}
    # ... and by a spawning process that holds no file capability: it cannot grant one.
    spawner = await maker(wk, "proc:snap:spawn")
    with pytest.raises(NotCapable):
        await wk.call_tool(spawner, "spawn", {"image": "snap",
                                              "caps": ["fs:/data/secret/**:read"]})
    child = await wk.call_tool(spawner, "spawn", {"image": "snap"})
    with pytest.raises(NotCapable):
        await wk.call_tool(child, "wordcount", {"path": "/data/secret/f.txt"})
    # The neighbour: the original still reads it, and a spawn it grants reads it too.
    assert (await wk.call_tool(pid, "wordcount", {"path": "/data/secret/f.txt"}))["words"] == 1
    granted = await wk.call_tool(pid, "spawn", {"image": "snap",
                                                "caps": ["fs:/data/public/**:read"]})
    assert (await wk.call_tool(granted, "wordcount", {"path": "/data/public/f.txt"}))[
        "words"] == 1


async def test_commit_reaches_only_oneself_and_below(wk: Kernel) -> None:
    a = await maker(wk, "image:*:register", "proc:maker:spawn")
    b = await maker(wk, "image:*:register")
    child = await wk.call_tool(a, "spawn", {"image": "maker"})
    with pytest.raises(NotCapable, match="neither"):
        await wk.call_tool(b, "commit_image", {"name": "stolen", "pid": a})
    [refused] = audit_of(wk, b, "image.commit")
    assert refused["phase"] == "denied"
    with pytest.raises(NotFound):
        wk.image("stolen")
    done = await wk.call_tool(a, "commit_image", {"name": "mine", "pid": child})
    assert done["origin"]["committed_from"]["pid"] == child and done["origin"]["by"] == a
    # A host commit records the host.
    assert wk.commit_image(b, "hosts").origin["by"] == "host"
