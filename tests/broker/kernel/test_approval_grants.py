"""Derived grants never outlive their source: what a person's answer grants is derived from the
asking capability by the same rule as every other derivation (`CapSpec.within`), so it keeps
that capability's expiry and takes its uses from that capability's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import ApprovalDenied, Conflict, FakeClock, Kernel, NotCapable
from broker.caps import CapSpec
from tests.conftest import open_image

NEEDS = ("fs:/**:read,write", "clock:*:read")
START = 1_700_000_000.0


def ask_write(**extra: Any) -> dict[str, Any]:
    return {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask", **extra}


def write(path: str = "/out/a.txt") -> dict[str, Any]:
    return {"path": path, "data": "x"}


async def _proc(kernel: Kernel, *caps: Any) -> int:
    Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS)
    return kernel.spawn("agent", caps=list(caps))


async def _answered(kernel: Kernel, pid: int, answer: Any, args: dict[str, Any]) -> Any:
    """Make the call, and answer the request it files with `answer(request_id)`."""
    results: list[Any] = []

    async def call() -> None:
        try:
            results.append(await kernel.call_tool(pid, "write_file", args))
        except Exception as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        answer(kernel.approvals()[0]["id"])
    return results[0]


def _fs_grants(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [c for c in kernel.capabilities(pid) if c["effect"] == "allow" and c["kind"] == "fs"]


def _denied(kernel: Kernel, pid: int, after: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit()[after:] if r["pid"] == pid and r["phase"] == "denied"
            and r["syscall"] == "fs.write"]


@pytest.fixture
async def clocked(db_path: Path) -> Any:
    clock = FakeClock(start=START)
    async with Kernel.open(db_path, clock=clock) as kernel:
        yield kernel, clock


async def test_always_keeps_the_asking_capabilitys_expiry(clocked: Any) -> None:
    """The reproduction: an ask capability that expires in 60 s with 2 uses, approved
    "always", allowed writes an hour later. Now the grant ends with its source."""
    kernel, clock = clocked
    pid = await _proc(kernel, ask_write(expires=START + 60, uses=2))
    assert await _answered(kernel, pid, lambda rid: kernel.approve(rid, always=True),
                           write()) == 1
    [grant] = _fs_grants(kernel, pid)
    assert grant["expires"] == START + 60
    answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"][-1]
    assert answer["detail"]["grant_spec"]["expires"] == START + 60
    clock.advance(30)
    assert await kernel.call_tool(pid, "write_file", write()) == 1  # still within its life
    clock.advance(3600)
    before = len(kernel.audit())
    with trio.fail_after(5), pytest.raises(NotCapable):
        await kernel.call_tool(pid, "write_file", write())
    [denied] = _denied(kernel, pid, before)
    assert denied["detail"]["error"] == "NOT_CAPABLE"
    assert kernel.approvals() == []  # the expired ask capability asks nobody either


async def test_always_stays_within_the_asking_capabilitys_uses(clocked: Any) -> None:
    kernel, _ = clocked
    pid = await _proc(kernel, ask_write(uses=2))
    assert await _answered(kernel, pid, lambda rid: kernel.approve(rid, always=True),
                           write()) == 1
    assert await kernel.call_tool(pid, "write_file", write("/out/a.txt")) == 1
    before = len(kernel.audit())
    # Two uses were asked for; a third is not there.
    with trio.fail_after(5), pytest.raises(NotCapable):
        await kernel.call_tool(pid, "write_file", write())
    assert _denied(kernel, pid, before)
    # Counted authority moved, never multiplied: the asking capability handed its uses over.
    [ask] = [c for c in kernel.capabilities(pid) if c["effect"] == "ask"]
    assert ask["uses"] == 0
    assert kernel.approvals() == []
    # ... also in the store, for the next broker.
    stored = {c.id: c for _, c in kernel.store.load_capabilities()}
    assert stored[ask["id"]].uses == 0
    # A fork copies what is left to give: not the spent asking capability.
    forked = kernel.fork(pid)
    assert not [c for c in kernel.capabilities(forked) if c["kind"] == "fs"]


async def test_once_takes_its_use_from_the_asking_capability(clocked: Any) -> None:
    kernel, _ = clocked
    pid = await _proc(kernel, ask_write(uses=1))
    assert await _answered(kernel, pid, kernel.approve, write()) == 1
    before = len(kernel.audit())
    # Its one use went to the one-shot grant.
    with trio.fail_after(5), pytest.raises(NotCapable):
        await kernel.call_tool(pid, "write_file", write("/out/b.txt"))
    assert _denied(kernel, pid, before) and kernel.approvals() == []


async def test_a_request_lives_no_longer_than_the_capability_that_asks(clocked: Any) -> None:
    kernel, clock = clocked
    pid = await _proc(kernel, ask_write(expires=START + 60))
    results: list[Any] = []

    async def call() -> None:
        try:
            results.append(await kernel.call_tool(pid, "write_file", write()))
        except Exception as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        assert request["deadline"] == START + 60  # not START + the hour-long timeout
        clock.advance(61)
    assert isinstance(results[0], ApprovalDenied)
    with pytest.raises(Conflict):
        kernel.approve(request["id"], always=True)
    assert not _fs_grants(kernel, pid)


async def test_a_standing_ask_capability_still_gives_a_standing_grant(clocked: Any) -> None:
    """The neighbour: with no expiry or count on the asking capability, "always" is what it
    always was, and a narrower scope is fine."""
    kernel, clock = clocked
    pid = await _proc(kernel, ask_write())
    assert await _answered(kernel, pid, lambda rid: kernel.approve(rid, always=True,
                                                                    scope="/out/**"),
                           write()) == 1
    clock.advance(10 * 365 * 86400)
    assert await kernel.call_tool(pid, "write_file", write("/out/z.txt")) == 1
    [grant] = _fs_grants(kernel, pid)
    assert "uses" not in grant and "expires" not in grant and grant["scope"] == "/out/**"


def test_within_lets_only_an_answer_turn_ask_into_allow() -> None:
    ask = CapSpec("fs", "/out/**", frozenset({"write"}), effect="ask", uses=2, expires=100.0)
    grant = CapSpec("fs", "/out/a", frozenset({"write"}), uses=2, expires=100.0)
    assert not grant.within(ask)  # a spawn or attenuation cannot approve itself
    assert grant.within(ask, answered=True)
    for wider in (CapSpec("fs", "/out/a", frozenset({"write"}), uses=2),  # no expiry
                  CapSpec("fs", "/out/a", frozenset({"write"}), uses=2, expires=101.0),
                  CapSpec("fs", "/out/a", frozenset({"write"}), expires=100.0),  # no count
                  CapSpec("fs", "/out/a", frozenset({"write"}), uses=3, expires=100.0),
                  CapSpec("fs", "/**", frozenset({"write"}), uses=2, expires=100.0)):
        assert not wider.within(ask, answered=True)
    deny = CapSpec("fs", "/out/**", frozenset({"write"}), effect="deny")
    assert not CapSpec("fs", "/out/a", frozenset({"write"})).within(deny, answered=True)
