"""Red-team attacks on the readpath branch (#17): a builtin wrapper's arguments checked once,
its syscall made from the tool table, its answer packed once, and the canonical-path fast
path of `normalize`. Real kernel, real SQLite, real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import ApprovalDenied, InvalidArgument, Kernel, NotCapable
from broker.caps.paths import normalize
from broker.store.audit import CLOSES, WHOLE
from tests.broker.kernel.test_approval_grants import _answered
from tests.conftest import open_image


class _NoDotDot(str):
    """A path whose `in` lies: it says it holds no "/." nor "//"."""

    def __contains__(self, item: object) -> bool:
        return False


async def _tree(kernel: Kernel, caps: list[str], tools: tuple[str, ...] = ("read_file",)) -> int:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "data" / "note.txt").write_text("hello")
    (root / "secret").mkdir()
    (root / "secret" / "key.txt").write_text("TOPSECRET")
    await open_image(kernel, needs=("fs:/**:read", "fs:/**:write"), tools=tools)
    return kernel.spawn("agent", caps=caps)


class _Shapeshifter(str):
    """A path whose every look lies: `in`, `split`, `==`, `startswith`, `str()`."""

    def __contains__(self, item: object) -> bool:
        return False

    def split(self, *args: Any, **kwargs: Any) -> list[str]:  # type: ignore[override]
        return ["data", "note.txt"]

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        return True

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return "/data/note.txt"


def test_a_lying_str_never_keeps_a_dotdot_component() -> None:
    for raw in ("/data/../secret/x", "/data/./x", "/data//x", "/data/x/", "../x", "a/../../x"):
        for liar in (_NoDotDot, _Shapeshifter):
            try:
                plain: object = normalize(raw, root="/", cwd="/data")
            except NotCapable as exc:
                plain = type(exc)
            try:
                lied: object = normalize(liar(raw), root="/", cwd="/data")
            except NotCapable as exc:
                lied = type(exc)
            assert lied == plain, (liar, raw)


async def test_a_lying_str_path_does_not_climb_out_of_a_capability(kernel: Kernel) -> None:
    pid = await _tree(kernel, ["fs:/data/**:read"])
    for call in ("tool", "syscall"):
        with pytest.raises((NotCapable, InvalidArgument)):
            if call == "tool":
                got = await kernel.call_tool(pid, "read_file",
                                             {"path": _NoDotDot("/data/../secret/key.txt")})
            else:
                got = await kernel.dispatcher.run(kernel.process(pid), None, "fs.read",
                                           {"path": _NoDotDot("/data/../secret/key.txt")})
            assert got != "TOPSECRET"
    assert kernel.verify_audit()[1] == []


# -- what held: every warm call through the tool table still meets the check step ----------


async def test_a_revoke_between_two_warm_calls_is_seen_by_the_second(kernel: Kernel) -> None:
    pid = await _tree(kernel, ["fs:/data/**:read"])
    args = {"path": "/data/note.txt"}
    for _ in range(3):  # its plan made, its path cached, its answer packed once
        assert await kernel.call_tool(pid, "read_file", args) == "hello"
    cap = next(c["id"] for c in kernel.capabilities(pid) if c["kind"] == "fs")
    kernel.revoke(cap)
    before = kernel.store.head_seq
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", args)
    denied = [r for r in kernel.audit(pid) if r["seq"] > before and r["syscall"] == "fs.read"]
    assert [r["phase"] for r in denied] == ["denied"]
    assert kernel.verify_audit()[1] == []


async def test_a_one_shot_grant_is_spent_once_through_the_tool_table(kernel: Kernel) -> None:
    pid = await _tree(kernel, [{"kind": "fs", "scope": "/data/**", "rights": ["read"],
                                "uses": 1}])
    args = {"path": "/data/note.txt"}
    assert await kernel.call_tool(pid, "read_file", args) == "hello"
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", args)
    reads = [r for r in kernel.audit(pid) if r["syscall"] == "fs.read"]
    assert [r["phase"] for r in reads] == ["intent", "outcome", "denied"]
    assert kernel.verify_audit()[1] == []


async def test_a_symlink_named_by_a_canonical_path_is_checked_where_it_leads(
        kernel: Kernel) -> None:
    pid = await _tree(kernel, ["fs:/data/**:read"])
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data" / "link").symlink_to(root / "secret")
    (root / "data" / "rel").symlink_to("../secret/key.txt")
    for path in ("/data/link/key.txt", "/data/rel", "data/link/key.txt", "/data/x/../rel"):
        with pytest.raises((NotCapable, InvalidArgument)):
            await kernel.call_tool(pid, "read_file", {"path": path})
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/./note.txt"}) == "hello"
    assert kernel.verify_audit()[1] == []


async def test_arguments_mutated_after_a_warm_call_are_checked_again(kernel: Kernel) -> None:
    pid = await _tree(kernel, ["fs:/data/**:read"])
    args: dict[str, Any] = {"path": "/data/note.txt"}
    assert await kernel.call_tool(pid, "read_file", args) == "hello"
    before = kernel.store.head_seq
    for key, bad in (("offset", -1), ("path", 5), ("extra", 1)):
        args[key] = bad
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(pid, "read_file", args)
        del args[key]
        args["path"] = "/data/note.txt"
    assert not [r for r in kernel.audit(pid) if r["seq"] > before and r["syscall"] == "fs.read"]


async def test_concurrent_reads_each_record_their_own_answer(kernel: Kernel) -> None:
    """One answer is kept for a tool's outcome at a time: many tools' reads at once, of
    different files and of one file, each outcome says (and vouches for) its own answer."""
    import trio

    from broker.kernel.audit_detail import pack_payload
    from broker.store.vouch import RESULT_HASH, digest

    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    texts = {f"/data/f{i}.txt": f"text {i} " * (i + 1) for i in range(8)}
    texts["/data/one.txt"] = "x"  # a one-character answer: an interned str
    for path, text in texts.items():
        (root / path.lstrip("/")).write_text(text)
    await open_image(kernel, needs=("fs:/**:read",), tools=("read_file",))
    pids = [kernel.spawn("agent", caps=["fs:/data/**:read"]) for _ in range(3)]
    got: list[tuple[int, str, str]] = []

    async def reader(pid: int, path: str) -> None:
        got.append((pid, path, await kernel.call_tool(pid, "read_file", {"path": path})))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            for pid in pids:
                for path in texts:
                    nursery.start_soon(reader, pid, path)
    assert all(text == texts[path] for _, path, text in got)
    seen = 0
    for pid in pids:
        records = kernel.audit(pid)
        by_seq = {r["seq"]: r for r in records}
        for r in records:
            if r["phase"] not in CLOSES or r["syscall"] not in ("fs.read", "tool.call"):
                continue
            # a read is one whole record (its intent and outcome); a tool call two
            intent = r if r["phase"] == WHOLE else by_seq[r["detail"]["intent"]]
            path = (intent["detail"]["args"]["path"] if r["syscall"] == "fs.read"
                    else intent["detail"]["args"]["args"]["path"])
            assert r["detail"]["result"] == texts[path]
            assert r["detail"][RESULT_HASH] == digest(pack_payload(texts[path]))  # type: ignore[arg-type]
            seen += 1
    assert seen == 2 * len(got)
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("change", [("path", "/secret/key.txt"), ("path", 5), ("extra", 1),
                                    ("path", "/out/../secret/key.txt")])
async def test_arguments_changed_while_a_person_is_asked_are_checked_again(
        kernel: Kernel, change: tuple[str, Any]) -> None:
    """A wrapper's arguments are taken as checked by the first look of its syscall only: a
    call that waits for a person and whose arguments changed meanwhile is checked again."""
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "out").mkdir()
    (root / "secret").mkdir()
    await open_image(kernel, needs=("fs:/**:read,write",), tools=("write_file",))
    pid = kernel.spawn("agent", caps=[{"kind": "fs", "scope": "/out/**", "rights": ["write"],
                                       "effect": "ask"}])
    args: dict[str, Any] = {"path": "/out/a.txt", "data": "x"}

    def change_then_approve(request_id: str) -> None:
        args[change[0]] = change[1]
        kernel.approve(request_id)

    result = await _answered(kernel, pid, change_then_approve, args)
    assert isinstance(result, (InvalidArgument, NotCapable, ApprovalDenied)), result
    assert not (root / "secret" / "key.txt").exists()
    assert not (root / "out" / "a.txt").exists()
    assert kernel.verify_audit()[1] == []


async def test_the_path_memo_is_never_another_roots_answer(kernel: Kernel) -> None:
    """`normalize` remembers canonical paths by (path, root): two processes naming the same
    text under different roots each read their own file, warm or cold, in either order; a
    way out of the narrower root is still an escape (typed, on the record), and a symlink
    still leads where it leads (refused), through openat2 as through the walk."""
    whole = await _tree(kernel, ["fs:/**:read"])
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "note.txt").write_text("top")
    (root / "data" / "out").symlink_to("../secret")
    jailed = kernel.spawn("agent", caps=["fs:/data/**:read"], root="/data")
    for _ in range(2):  # cold, then warm
        assert await kernel.call_tool(whole, "read_file", {"path": "/note.txt"}) == "top"
        assert await kernel.call_tool(jailed, "read_file", {"path": "/note.txt"}) == "hello"
    for path in ("/../secret/key.txt", "../secret/key.txt", "/out/key.txt"):
        with pytest.raises(NotCapable):
            await kernel.call_tool(jailed, "read_file", {"path": path})
    refused = [(r["phase"], r["detail"]["error"], r["detail"]["args"]["path"])
               for r in kernel.audit(jailed) if r["syscall"] == "fs.read"
               and r["phase"] == "denied"]
    assert refused == [("denied", "NOT_CAPABLE", p)
                       for p in ("/../secret/key.txt", "../secret/key.txt", "/out/key.txt")]
    assert kernel.verify_audit()[1] == []
