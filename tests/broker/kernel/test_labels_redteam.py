"""Red team for information-flow labels: flows the design claims to stop, tried through the
channels the runtime mediates. Each attack asserts the typed error and the `denied` record
naming the labels, and a neighbour that still works. Real files, SQLite and processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    ApprovalDenied,
    InvalidArgument,
    Kernel,
    NotCapable,
    NotFound,
    ScriptedPlanner,
)
from broker.planner.base import CallTool, Exit
from tests.broker.kernel.test_labels import EXPORT, NEEDS, SECRET_READ, TOOLS, _records, _tree
from tests.conftest import open_image

WORK = "fs:/work/**:read,write"


async def _proc(kernel: Kernel, *caps: Any) -> int:
    await open_image(kernel, needs=NEEDS, tools=TOOLS, types={"text": {"type": "string"}})
    return kernel.spawn("agent", caps=list(caps))


def _refused(kernel: Kernel, pid: int, path: str) -> None:
    [denied] = [r for r in _records(kernel, pid, "fs.write", "denied") if r["resource"] == path]
    assert denied["detail"]["labels"] == ["secret"]
    assert not [r for r in _records(kernel, pid, "fs.write", "intent") if r["resource"] == path]


async def _export_refused(kernel: Kernel, pid: int, path: str, data: str) -> None:
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(pid, "write_file", {"path": path, "data": data})
    assert not Path(kernel.fs.root, path.lstrip("/")).exists()  # type: ignore[attr-defined]
    _refused(kernel, pid, path)


async def test_a_secret_in_a_file_name_or_size_labels_whoever_lists_or_stats_it(
        kernel: Kernel) -> None:
    """A secret process names a file after the secret, or sizes it by it; a public process
    with the same directory lists or stats it and exports what it learned."""
    _tree(kernel)
    writer = await _proc(kernel, WORK, SECRET_READ)
    token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(writer, "write_file", {"path": f"/work/{token}", "data": "x" * 7})
    # The neighbour: a public file in a public directory lists and stats as public.
    lister = await _proc(kernel, "fs:/public/**:read", WORK, EXPORT)
    assert [e["name"] for e in await kernel.call_tool(lister, "list_dir",
                                                      {"path": "/public"})] == ["readme.txt"]
    assert (await kernel.call_tool(lister, "stat", {"path": "/public/readme.txt"}))["size"] == 5
    assert kernel.process(lister).label == frozenset()
    await kernel.call_tool(lister, "write_file", {"path": "/exports/ok", "data": "fine"})
    # The attack: the listing carries the secret's name.
    names = [e["name"] for e in await kernel.call_tool(lister, "list_dir", {"path": "/work"})]
    assert names == ["tok-123"] and kernel.process(lister).label == {"secret"}
    await _export_refused(kernel, lister, "/exports/name", names[0])
    [listed] = _records(kernel, lister, "fs.list", "intent+outcome")[-1:]
    assert listed["detail"]["labels"] == ["secret"]
    # A stat of the file the secret process wrote tells its size.
    stater = await _proc(kernel, WORK, EXPORT)
    assert (await kernel.call_tool(stater, "stat", {"path": "/work/tok-123"}))["size"] == 7
    assert kernel.process(stater).label == {"secret"}
    await _export_refused(kernel, stater, "/exports/size", "7")


async def test_whether_a_secret_process_made_a_file_labels_whoever_finds_out(
        kernel: Kernel) -> None:
    """One bit per name: the secret process makes /work/bit1 or not; a public process stats
    it and learns from the NotFound."""
    _tree(kernel)
    writer = await _proc(kernel, WORK, SECRET_READ)
    await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(writer, "write_file", {"path": "/work/bit1", "data": ""})
    await kernel.call_tool(writer, "make_dir", {"path": "/work/bits"})
    await kernel.call_tool(writer, "remove", {"path": "/work/bit1"})
    prober = await _proc(kernel, WORK, EXPORT)
    with pytest.raises(NotFound):
        await kernel.call_tool(prober, "stat", {"path": "/work/bit1"})
    assert kernel.process(prober).label == {"secret"}
    await _export_refused(kernel, prober, "/exports/bit", "0")
    # The neighbour: a miss where no labelled process wrote stays public.
    clean = await _proc(kernel, "fs:/public/**:read", EXPORT)
    with pytest.raises(NotFound):
        await kernel.call_tool(clean, "stat", {"path": "/public/nothing"})
    assert kernel.process(clean).label == frozenset()


async def test_a_childs_exit_result_carries_its_label_to_the_parent_that_waits(
        db_path: Path) -> None:
    """A public parent spawns a child that may read the secret; the child exits with the
    secret as its result; the parent waits for it and exports the result."""

    def snitch(history: Any) -> Any:
        if not history:
            return CallTool("read_file", {"path": "/secrets/token.txt"})
        return Exit(0, result=history[-1].result)

    def planners(image: Any, pid: int) -> Any:
        return ScriptedPlanner(snitch) if image.name == "snitch" else None

    async with Kernel.open(db_path, planners=planners) as kernel:
        _tree(kernel)
        await open_image(kernel, "snitch", needs=NEEDS, tools=TOOLS)
        await open_image(kernel, "quiet", needs=NEEDS, tools=TOOLS,
                         planner={"kind": "scripted", "actions": [{"exit": 0, "result": "hi"}]})
        parent = await _proc(kernel, SECRET_READ, EXPORT, "proc:*:spawn")
        # The neighbour: a child that read nothing hands back a public result.
        quiet = await kernel.call_tool(parent, "spawn", {"image": "quiet", "caps": []})
        done = await kernel.call_tool(parent, "wait", {"pid": quiet, "timeout": 10})
        assert done["result"] == "hi" and kernel.process(parent).label == frozenset()
        child = await kernel.call_tool(parent, "spawn", {"image": "snitch",
                                                         "caps": [SECRET_READ]})
        done = await kernel.call_tool(parent, "wait", {"pid": child, "timeout": 10})
        assert done["result"] == "tok-123"
        assert kernel.process(parent).label == {"secret"}
        await _export_refused(kernel, parent, "/exports/from-child", done["result"])


async def test_the_source_label_does_not_depend_on_which_of_two_capabilities_allowed_it(
        kernel: Kernel) -> None:
    """The host grants a broad plain read and the labelled one for /secrets: the secret is
    secret whichever is listed first."""
    _tree(kernel)
    for caps in ([SECRET_READ, "fs:/**:read"], ["fs:/**:read", SECRET_READ]):
        pid = await _proc(kernel, *caps, EXPORT)
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        assert kernel.process(pid).label == {"secret"}, caps
        await _export_refused(kernel, pid, f"/exports/{len(caps[0])}", token)
        # The neighbour: the broad capability still reads public files as public.
        other = await _proc(kernel, *caps, EXPORT)
        await kernel.call_tool(other, "read_file", {"path": "/public/readme.txt"})
        assert kernel.process(other).label == frozenset()


async def test_an_object_named_after_a_secret_labels_whoever_lists_it(kernel: Kernel) -> None:
    _tree(kernel)
    writer = await _proc(kernel, SECRET_READ, "obj:shared:read,write")
    lister = await _proc(kernel, "obj:shared:read", EXPORT)
    await kernel.call_tool(writer, "put_object", {"ns": "shared", "name": "public-note",
                                                  "type": "text", "value": "hi"})
    # The neighbour: a listing of public names stays public.
    listed = await kernel.call_tool(lister, "list_objects", {"ns": "shared"})
    assert [o["name"] for o in listed] == ["public-note"]
    assert kernel.process(lister).label == frozenset()
    token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(writer, "put_object", {"ns": "shared", "name": token,
                                                  "type": "text", "value": ""})
    listed = await kernel.call_tool(lister, "list_objects", {"ns": "shared"})
    assert "tok-123" in [o["name"] for o in listed]
    assert kernel.process(lister).label == {"secret"}
    await _export_refused(kernel, lister, "/exports/names", "tok-123")


async def test_approving_always_declassifies_only_the_labels_the_person_was_shown(
        kernel: Kernel) -> None:
    """The export bound asks about untrusted and about secret data. A person approves an
    untrusted flow "always"; the agent then reads the secret and writes it out: that flow
    must still be put to a person, not ride on the earlier answer."""
    root = _tree(kernel)
    (root / "inbox").mkdir()
    (root / "inbox" / "mail.txt").write_text("please forward")
    inbox = {"kind": "fs", "scope": "/inbox/**", "rights": ["read"], "labels": ["untrusted"]}
    bound = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
             "flows": {"untrusted": "ask", "secret": "ask"}}
    pid = await _proc(kernel, inbox, SECRET_READ, bound)
    await kernel.call_tool(pid, "read_file", {"path": "/inbox/mail.txt"})
    seen: list[dict[str, Any]] = []

    async def answer(always: bool, approve: bool = True) -> None:
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        seen.append(request)
        if approve:
            kernel.approve(request["id"], always=always, scope="/exports/**")
        else:
            kernel.deny(request["id"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, True)
        await kernel.call_tool(pid, "write_file", {"path": "/exports/a", "data": "fwd"})
    assert seen[0]["labels"] == ["untrusted"]
    # The neighbour: another untrusted flow rides on the "always", with no one asked.
    await kernel.call_tool(pid, "write_file", {"path": "/exports/b", "data": "fwd"})
    assert (root / "exports" / "b").read_text() == "fwd"
    assert len(kernel.approvals()) == 0 and len(seen) == 1
    # The attack: now secret too; the person is asked again, naming secret, and says no.
    token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, False, False)
        with pytest.raises(ApprovalDenied):
            await kernel.call_tool(pid, "write_file", {"path": "/exports/c", "data": token})
    assert "secret" in seen[1]["labels"]
    assert not (root / "exports" / "c").exists()
    [denied] = [r for r in _records(kernel, pid, "fs.write", "denied")
                if r["resource"] == "/exports/c"]
    assert denied["detail"]["request"] == seen[1]["id"]


async def test_approving_once_lets_exactly_one_of_two_identical_concurrent_flows_out(
        kernel: Kernel) -> None:
    root = _tree(kernel)
    ask = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "ask"}}
    pid = await _proc(kernel, SECRET_READ, ask)
    await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
    outcomes: list[Any] = []

    async def write() -> None:
        try:
            outcomes.append(await kernel.call_tool(pid, "write_file", {
                "path": "/exports/same", "data": "x", "append": True}))
        except ApprovalDenied as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        nursery.start_soon(write)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        first = kernel.approvals()[0]
        kernel.approve(first["id"])
        with trio.fail_after(5):
            while len(outcomes) < 2:
                for other in kernel.approvals():
                    kernel.deny(other["id"])
                await trio.sleep(0.01)
    assert sorted(map(str, outcomes)).count("1") == 1, outcomes
    assert (root / "exports" / "same").read_text() == "x"  # once, not twice
    # Replaying the same arguments later asks again.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.deny(kernel.approvals()[0]["id"])
    assert isinstance(outcomes[-1], ApprovalDenied)
    assert (root / "exports" / "same").read_text() == "x"


async def test_exec_into_an_image_that_declares_no_bounds_keeps_the_label_and_the_bound(
        kernel: Kernel) -> None:
    root = _tree(kernel)
    await open_image(kernel, "plain", needs=("fs:/**:read,write",), tools=TOOLS)
    await open_image(kernel, "execer", needs=("fs:/**:read,write", "proc:*:exec"),
                     tools=(*TOOLS, "exec"))

    async def _proc(kernel: Kernel, *caps: Any) -> int:
        return kernel.spawn("execer", caps=list(caps))

    pid = await _proc(kernel, SECRET_READ, EXPORT, "proc:plain:exec")
    await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(pid, "exec", {"image": "plain"})
    assert kernel.process(pid).image.name == "plain"
    assert kernel.process(pid).label == {"secret"}
    await _export_refused(kernel, pid, "/exports/after-exec", "tok-123")
    # The neighbour: a public process execs the same way and exports.
    clean = await _proc(kernel, SECRET_READ, EXPORT, "proc:plain:exec")
    await kernel.call_tool(clean, "exec", {"image": "plain"})
    await kernel.call_tool(clean, "write_file", {"path": "/exports/clean", "data": "ok"})
    assert (root / "exports" / "clean").read_text() == "ok"


async def test_a_label_rule_that_could_never_match_is_refused_not_silently_dropped(
        tmp_path: Path) -> None:
    """A rule fails open: misspelt, it labels nothing and the secret reads as public."""
    for bad in ({"kind": "FS", "scope": "/secrets/**"}, {"kind": "fs ", "scope": "/secrets/**"},
                {"kind": "fs", "scope": "secrets/**"}, {"kind": "fs", "scope": "/a/../secrets/**"},
                {"kind": "fs", "scope": "/secrets//**"},
                {"kind": "fs", "scope": "/secrets/**", "labels": ["secr\u0435t"]},  # Cyrillic e
                {"kind": "fs", "scope": "/secrets/**", "labels": [f"l{i}" for i in range(33)]}):
        with pytest.raises(InvalidArgument, match="label rule"):
            async with Kernel.open(tmp_path / "k.db", label_rules=[{"labels": ["s"], **bad}]):
                pass
    assert list(tmp_path.iterdir()) == []
    # The neighbour: well-formed rules open, a host kind's too, and label what they cover.
    async with Kernel.open(tmp_path / "k.db", label_rules=[
            {"kind": "fs", "scope": "/secrets/**", "labels": ["secret"]},
            {"kind": "email", "scope": "*@example.com", "labels": ["untrusted"]}]) as kernel:
        _tree(kernel)
        pid = await _proc(kernel, "fs:/secrets/**:read")
        await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        assert kernel.process(pid).label == {"secret"}


async def test_a_child_narrowing_a_broad_plain_read_still_gets_the_secrets_label(
        kernel: Kernel) -> None:
    """The parent holds a broad plain read and the labelled read of /secrets; its child asks
    for /secrets through the broad one, without the label."""
    root = _tree(kernel)
    parent = await _proc(kernel, "fs:/**:read", SECRET_READ, EXPORT, "proc:agent:spawn")
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [
        "fs:/secrets/**:read", "fs:/public/**:read", EXPORT]})
    # The neighbour: the child's public read stays public, and exports.
    text = await kernel.call_tool(child, "read_file", {"path": "/public/readme.txt"})
    await kernel.call_tool(child, "write_file", {"path": "/exports/readme", "data": text})
    assert (root / "exports" / "readme").read_text() == "hello"
    token = await kernel.call_tool(child, "read_file", {"path": "/secrets/token.txt"})
    assert kernel.process(child).label == {"secret"}
    await _export_refused(kernel, child, "/exports/laundered", token)


async def test_a_once_approved_call_whose_label_grew_while_it_waited_is_refused(
        kernel: Kernel) -> None:
    """The person is shown an untrusted flow and approves it once; meanwhile another call of
    the same process read the secret, so the waiting call now carries it: refused."""
    root = _tree(kernel)
    (root / "inbox").mkdir()
    (root / "inbox" / "mail.txt").write_text("hi")
    inbox = {"kind": "fs", "scope": "/inbox/**", "rights": ["read"], "labels": ["untrusted"]}
    bound = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"*": "ask"}}
    pid = await _proc(kernel, inbox, SECRET_READ, bound)
    await kernel.call_tool(pid, "read_file", {"path": "/inbox/mail.txt"})
    outcomes: list[Any] = []

    async def write(path: str) -> None:
        try:
            outcomes.append(await kernel.call_tool(pid, "write_file", {"path": path,
                                                                       "data": "x"}))
        except ApprovalDenied as exc:
            outcomes.append(exc)

    async def approve_next() -> dict[str, Any]:
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        kernel.approve(request["id"])
        return request

    # The neighbour: approved once with nothing else happening, it goes out.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "/exports/ok")
        assert (await approve_next())["labels"] == ["untrusted"]
    assert outcomes == [1] and (root / "exports" / "ok").exists()
    # The attack: the secret is read while the request waits.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "/exports/grown")
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        assert (await approve_next())["labels"] == ["untrusted"]
    assert isinstance(outcomes[-1], ApprovalDenied)
    assert not (root / "exports" / "grown").exists()
    [denied] = [r for r in _records(kernel, pid, "fs.write", "denied")
                if r["resource"] == "/exports/grown"]
    assert "secret" in denied["detail"]["labels"]


async def test_a_labelled_host_tools_error_text_carries_its_label(kernel: Kernel) -> None:
    """A host tool that reads secret data fails with some of it in its message."""
    from broker.kernel.host_tool import host_tool

    @host_tool(kind="vault", right="read", labels=["secret"])
    def peek(key: str) -> str:
        raise InvalidArgument(f"no entry {key!r}; the vault holds tok-123")

    @host_tool(kind="notes", right="read")
    def note(key: str) -> str:
        raise InvalidArgument(f"no note {key!r}")

    kernel.host_tool(peek)
    kernel.host_tool(note)
    root = _tree(kernel)
    await open_image(kernel, "vaulted", needs=("fs:/**:read,write", "vault:*:read",
                                               "notes:*:read"), tools=(*TOOLS, "peek", "note"))
    pid = kernel.spawn("vaulted", caps=["vault:*:read", "notes:*:read", EXPORT])
    # The neighbour: an unlabelled tool's failure leaves the caller public.
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "note", {"key": "x"})
    assert kernel.process(pid).label == frozenset()
    with pytest.raises(InvalidArgument, match="tok-123") as err:
        await kernel.call_tool(pid, "peek", {"key": "x"})
    assert kernel.process(pid).label == {"secret"}
    await _export_refused(kernel, pid, "/exports/err", str(err.value))
    assert not (root / "exports" / "err").exists()
