"""A builtin tool that is exactly one syscall (`read_file` is `fs.read`) does the work they
share once: its arguments pass the syscall's own compiled check when the tool is called, and
the syscall takes those very arguments as checked; its answer is summarized, packed and hashed
once, for the syscall's outcome and the tool's. Nothing is checked less: other arguments, or
the same ones for another syscall, are checked as ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import broker.kernel.dispatch as dispatch
from broker import InvalidArgument, Kernel
from broker.kernel.audit_detail import MAX_REPLAY_PAYLOAD
from broker.kernel.invocation import Invocation
from broker.schema.validator import Schema
from broker.store.audit import CLOSES
from broker.store.vouch import RESULT_HASH
from broker.syscalls import TABLE
from broker.syscalls.table import LazySchema
from sandboxes.base import CallLimits
from tests.conftest import open_image


async def _reader(kernel: Kernel) -> int:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "data" / "note.txt").write_text("hello")
    await open_image(kernel, needs=("fs:/**:read",), tools=("read_file", "now"))
    return kernel.spawn("agent", caps=["fs:/data/**:read"])


def _count(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    real = getattr(owner, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(owner, name, counted)
    return calls


async def test_a_wrappers_arguments_are_checked_once(kernel: Kernel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pid = await _reader(kernel)
    args = {"path": "/data/note.txt"}
    await kernel.call_tool(pid, "read_file", args)  # (its plan made)
    checks = _count(monkeypatch, Schema, "check")
    assert await kernel.call_tool(pid, "read_file", args) == "hello"
    # read_file's by fs.read's own check (not fs.read's again; tool.call's map is the
    # kernel's own here, `Kernel.call_tool`'s, not checked either)
    assert [what for _, _, what in checks] == ["tool read_file"]
    fs_read = TABLE["fs.read"].validator  # compiled at its first check
    assert checks[0][0] is (fs_read.compiled() if isinstance(fs_read, LazySchema) else fs_read)


async def test_bad_arguments_to_a_wrapper_are_refused_by_the_tool_as_before(
        kernel: Kernel) -> None:
    pid = await _reader(kernel)
    before = kernel.store.head_seq
    for bad in ({"path": 5}, {"path": "/data/note.txt", "extra": 1}, {}):
        with pytest.raises(InvalidArgument, match=r"^tool read_file"):
            await kernel.call_tool(pid, "read_file", bad)
    assert not [r for r in kernel.audit(pid) if r["seq"] > before and r["syscall"] == "fs.read"]


async def test_arguments_taken_as_checked_are_only_those_and_only_once(kernel: Kernel) -> None:
    """What a wrapper's call leaves is taken by its syscall for exactly those arguments: other
    arguments (another object), another syscall, or a second use are checked again."""
    pid = await _reader(kernel)
    proc = kernel.process(pid)
    run_now = kernel.dispatcher.run_now
    checked = {"path": "/data/note.txt"}

    def inv() -> Invocation:
        made = Invocation(kernel.store.head_seq, pid, "read_file", (), 0, CallLimits(),
                          in_broker=True)
        made.checked = (TABLE["fs.read"], checked)
        return made

    bad = {"path": "/data/note.txt", "extra": 1}
    with pytest.raises(InvalidArgument, match=r"^fs\.read"):
        run_now(proc, inv(), "fs.read", bad)  # another object
    with pytest.raises(InvalidArgument, match=r"^fs\.stat"):
        run_now(proc, inv(), "fs.stat", {"path": "/data/note.txt", "binary": True})
    once = inv()
    assert run_now(proc, once, "fs.read", checked) == "hello"
    assert once.checked is None
    checked["offset"] = -1  # (a second call with them: checked again)
    with pytest.raises(InvalidArgument, match=r"^fs\.read"):
        run_now(proc, once, "fs.read", checked)


async def test_a_builtins_answer_is_packed_once_and_both_outcomes_vouch_for_it(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = await _reader(kernel)
    args = {"path": "/data/note.txt"}
    await kernel.call_tool(pid, "read_file", args)
    before = kernel.store.head_seq
    packed = _count(monkeypatch, dispatch, "pack_payload")
    shown = _count(monkeypatch, dispatch, "summarize")
    assert await kernel.call_tool(pid, "read_file", args) == "hello"
    assert [value for (value, *_size) in packed] == [{"name": "read_file", "args": args},
                                                     "hello"]  # (_size: its JSON's, if known)
    assert [value for (value,) in shown] == [{"name": "read_file", "args": args}, args, "hello"]
    outcomes = {r["syscall"]: r for r in kernel.audit(pid)
                if r["seq"] > before and r["phase"] in CLOSES}
    assert outcomes["fs.read"]["detail"]["result"] == "hello"
    assert outcomes["tool.call"]["detail"]["result"] == "hello"
    hashed = {r["detail"][RESULT_HASH] for r in outcomes.values()}
    assert len(hashed) == 1
    assert kernel.verify_audit()[1] == []


async def test_a_mutable_answer_is_packed_for_each_outcome(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A map (`stat`'s) could change between the two records: each packs its own."""
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "data" / "note.txt").write_text("hello")
    await open_image(kernel, needs=("fs:/**:read",), tools=("stat",))
    pid = kernel.spawn("agent", caps=["fs:/data/**:read"])
    packed = _count(monkeypatch, dispatch, "pack_payload")
    found = await kernel.call_tool(pid, "stat", {"path": "/data/note.txt"})
    assert [value for (value, *_size) in packed][1:] == [found, found]


async def test_no_answer_is_held_after_the_call(kernel: Kernel) -> None:
    """The answer kept for the tool's outcome is let go by it; one too big for a payload (the
    read's bound is larger) is never kept."""
    pid = await _reader(kernel)
    big = Path(kernel.fs.root, "data", "big.txt")  # type: ignore[attr-defined]
    big.write_text("x" * (MAX_REPLAY_PAYLOAD + 1))
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/note.txt"}) == "hello"
    assert kernel.dispatcher._answer[0] is None
    assert len(await kernel.call_tool(pid, "read_file", {"path": "/data/big.txt"})) > (
        MAX_REPLAY_PAYLOAD)
    assert kernel.dispatcher._answer[0] is None


async def test_a_number_answer_is_packed_once_and_both_outcomes_vouch_for_it(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A number cannot change either (`now`'s time): the tool's outcome takes the syscall's."""
    await open_image(kernel, needs=("clock:*:read",), tools=("now",))
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    await kernel.call_tool(pid, "now", {})
    before = kernel.store.head_seq
    packed = _count(monkeypatch, dispatch, "pack_payload")
    now = await kernel.call_tool(pid, "now", {})
    assert type(now) is float
    assert [value for (value, *_size) in packed] == [{"name": "now", "args": {}}, now]
    outcomes = {r["syscall"]: r for r in kernel.audit(pid)
                if r["seq"] > before and r["phase"] in CLOSES}
    assert outcomes["clock.now"]["detail"]["result"] == now
    assert outcomes["tool.call"]["detail"]["result"] == now
    assert len({r["detail"][RESULT_HASH] for r in outcomes.values()}) == 1
    assert kernel.dispatcher._answer[0] is None
    assert kernel.verify_audit()[1] == []


def test_a_nil_payloads_digest_is_the_digest_of_its_bytes() -> None:
    from broker.kernel.audit_detail import pack_payload, payload_digest
    from broker.store.vouch import digest

    for value in (None, 0, "", b"", [None], {"a": None}):
        packed = pack_payload(value)
        assert packed is not None
        assert payload_digest(packed) == digest(packed)


async def test_a_registrations_answer_is_packed_once_and_both_outcomes_vouch_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A map, but one `tool.register` made for this call (`fresh_answer`), which its wrapper
    `register_tool` hands on untouched: the tool's outcome takes the syscall's packing."""
    from sandboxes.wasm import WasmSandbox
    from tests.broker.kernel.test_register_commits import TOOL

    async with Kernel.open(tmp_path / "k.db",
                           sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await open_image(kernel, needs=("tool:*:register,call",), tools=("register_tool",))
        pid = kernel.spawn("agent", caps=["tool:wat:register"])
        before = kernel.store.head_seq
        packed = _count(monkeypatch, dispatch, "pack_payload")
        args = {"name": "t", "lang": "wat", "source": TOOL}
        answer = await kernel.call_tool(pid, "register_tool", args)
        assert set(answer) == {"name", "lang", "hash"}
        assert [value for (value, *_size) in packed] == [
            {"name": "register_tool", "args": args}, answer]
        outcomes = {r["syscall"]: r for r in kernel.audit(pid)
                    if r["seq"] > before and r["phase"] in CLOSES}
        assert outcomes["tool.register"]["detail"]["result"] == answer
        assert outcomes["tool.call"]["detail"]["result"] == answer
        assert len({r["detail"][RESULT_HASH] for r in outcomes.values()}) == 1
        assert kernel.dispatcher._answer[0] is None
        assert kernel.verify_audit()[1] == []
