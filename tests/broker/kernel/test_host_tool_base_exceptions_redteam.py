"""Red team (embedding surface): what an embedder's function raises or returns that is not an
`Exception` (SystemExit from argparse on a model's bad arguments, asyncio's CancelledError,
a BaseException of its own, one whose __str__ fails) fails its call, typed and recorded
whole, and never the broker: it escaped `except Exception` and ended the kernel's run (every
process stopped, a planner's process left 'running'), and one whose __str__ failed left the
call's intent without an outcome. A real kernel over real SQLite."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import BaseModel, field_validator

from broker import AgentImage, CallTool, InvalidArgument, Kernel, ScriptedPlanner, ToolFailed


class OwnBase(BaseException):
    """An embedder's library's own BaseException."""


class Unsayable(BaseException):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class UnsayableInterrupt(KeyboardInterrupt):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class SaysBase(Exception):
    def __str__(self) -> str:
        raise OwnBase("raised while being told")


def cli(argv: list[str]) -> Any:
    """A command line parsed by argparse, which exits on arguments it does not know."""
    parser = argparse.ArgumentParser(prog="report")
    parser.add_argument("--month")
    return vars(parser.parse_args(argv))


RAISED = {
    "argparse": lambda argv: cli(argv),
    "asyncio_cancelled": lambda argv: (_ for _ in ()).throw(asyncio.CancelledError()),
    "own_base": lambda argv: (_ for _ in ()).throw(OwnBase("x")),
    "unsayable": lambda argv: (_ for _ in ()).throw(Unsayable()),
    "says_base": lambda argv: (_ for _ in ()).throw(SaysBase()),
    "generator_exit": lambda argv: (_ for _ in ()).throw(GeneratorExit()),
    "group": lambda argv: (_ for _ in ()).throw(BaseExceptionGroup("g", [SystemExit(1)])),
}


class HostileAttrs:
    """A result whose attribute lookup (the broker asks for `model_dump`) exits."""

    def __getattr__(self, name: str) -> Any:
        raise SystemExit(f"no {name}")


def _tool(kernel: Kernel, raiser: Any, is_async: bool) -> None:
    if is_async:
        async def report(argv: list[str]) -> Any:
            return raiser(argv)
    else:
        def report(argv: list[str]) -> Any:
            return raiser(argv)
    kernel.host_tool(report, kind="reports", right="run")


def _records(kernel: Kernel, pid: int, syscall: str) -> list[tuple[str, Any]]:
    return [(r["phase"], r["detail"].get("error")) for r in kernel.audit(pid)
            if r["syscall"] == syscall]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", sorted(RAISED))
async def test_a_base_exception_fails_the_call_never_the_kernel(
        db_path: Path, kind: str, is_async: bool) -> None:
    async with Kernel.open(db_path) as kernel:
        _tool(kernel, RAISED[kind], is_async)
        await kernel.register_image(AgentImage("r", tools=("report", "now"),
                                               needs=["reports:*:run", "clock:*:read"]))
        # A planner's process: a model's arguments that make argparse exit.
        pid = kernel.spawn("r", caps=["reports:*:run", "clock:*:read"], planner=ScriptedPlanner(
            [CallTool("report", {"argv": ["--bogus"]})]))
        with trio.fail_after(20):
            status = await kernel.wait(pid)
        assert status["state"] == "exited"
        assert _records(kernel, pid, "host.report") == [("intent", None),
                                                        ("outcome", "TOOL_FAILED")]
        # The host's own call: typed, recorded whole.
        host = kernel.spawn("r", caps=["reports:*:run", "clock:*:read"])
        with pytest.raises(ToolFailed, match="host tool report failed"):
            await kernel.call_tool(host, "report", {"argv": ["--bogus"]})
        assert _records(kernel, host, "host.report") == [("intent", None),
                                                         ("outcome", "TOOL_FAILED")]
        assert isinstance(await kernel.call_tool(host, "now", {}), int | float | dict)
        assert kernel.verify_audit()[1] == []


async def test_a_result_whose_own_code_exits_is_the_tools_failure(kernel: Kernel) -> None:
    kernel.host_tool(lambda: HostileAttrs(), name="odd", kind="misc", right="get",
                     schema={"type": "object"})
    kernel.host_tool(lambda: {"fine": True}, name="plain", kind="misc", right="get",
                     schema={"type": "object"})
    await kernel.register_image(AgentImage("o", tools=("odd", "plain"), needs=["misc:*:get"]))
    pid = kernel.spawn("o", caps=["misc:*:get"], planner=ScriptedPlanner(
        [CallTool("odd", {}), CallTool("plain", {})]))
    with trio.fail_after(20):
        assert (await kernel.wait(pid))["state"] == "exited"
    assert _records(kernel, pid, "host.odd") == [("intent", None), ("outcome", "TOOL_FAILED")]
    assert _records(kernel, pid, "host.plain") == [("intent", None), ("outcome", None)]
    host = kernel.spawn("o", caps=["misc:*:get"])
    with pytest.raises(ToolFailed, match="cannot be dumped"):
        await kernel.call_tool(host, "odd", {})
    assert await kernel.call_tool(host, "plain", {}) == {"fine": True}


async def test_a_keyboard_interrupt_is_the_persons_and_goes_on_recorded(
        kernel: Kernel) -> None:
    """A Ctrl-C (trio raises a person's wherever it finds the main task) is not the tool's
    failure: it goes on as itself, the call's record whole (its __str__ failing too)."""

    async def stop(argv: list[str]) -> None:
        raise UnsayableInterrupt

    kernel.host_tool(stop, kind="reports", right="run")
    await kernel.register_image(AgentImage("r", tools=("stop",), needs=["reports:*:run"]))
    pid = kernel.spawn("r", caps=["reports:*:run"])
    with pytest.raises(UnsayableInterrupt):
        await kernel.call_tool(pid, "stop", {"argv": []})
    assert _records(kernel, pid, "host.stop") == [("intent", None),
                                                  ("outcome", "UnsayableInterrupt")]


class Order(BaseModel):
    """A model whose validator (the embedder's code) fails on what the model sends."""

    qty: int

    @field_validator("qty")
    @classmethod
    def known(cls, qty: int) -> int:
        if qty == 1:
            raise SystemExit("validator exits")
        if qty == 2:
            raise KeyError("a bug of the validator's")
        if qty < 0:
            raise ValueError("no negative orders")  # the model's fault: InvalidArgument
        return qty


def place(order: Order) -> int:
    return order.qty


def by_shop(args: dict[str, Any]) -> str:
    if args.get("shop") == "exit":
        raise SystemExit("resource function exits")
    return str(args.get("shop"))


async def test_the_embedders_validators_and_resource_function_fail_the_call_only(
        kernel: Kernel) -> None:
    kernel.host_tool(place, kind="shop", right="order")
    kernel.host_tool(lambda shop: shop, name="visit", kind="shop", right="order",
                     resource=by_shop, schema={"type": "object"})
    await kernel.register_image(AgentImage("s", tools=("place", "visit"),
                                           needs=["shop:*:order"]))
    pid = kernel.spawn("s", caps=["shop:*:order"], planner=ScriptedPlanner([
        CallTool("place", {"order": {"qty": 1}}), CallTool("visit", {"shop": "exit"}),
        CallTool("place", {"order": {"qty": 3}})]))
    with trio.fail_after(20):
        assert (await kernel.wait(pid))["state"] == "exited"
    assert _records(kernel, pid, "host.place") == [
        ("intent", None), ("outcome", "TOOL_FAILED"), ("intent", None), ("outcome", None)]
    assert _records(kernel, pid, "host.visit") == [("rejected", "INVALID_ARGUMENT")]
    host = kernel.spawn("s", caps=["shop:*:order"])
    with pytest.raises(ToolFailed, match="KeyError"):  # its bug, not the caller's fault
        await kernel.call_tool(host, "place", {"order": {"qty": 2}})
    with pytest.raises(InvalidArgument, match="no negative orders"):
        await kernel.call_tool(host, "place", {"order": {"qty": -1}})
    with pytest.raises(InvalidArgument, match="resource function failed"):
        await kernel.call_tool(host, "visit", {"shop": "exit"})
    assert await kernel.call_tool(host, "visit", {"shop": "corner"}) == "corner"


class ExitingFrontEnd:
    """An embedder's approval front end that exits (a prompt's library, say) when told."""

    def requested(self, request: dict[str, Any], queue: Any) -> None:
        raise SystemExit("the front end exits")


async def test_an_approval_front_end_that_exits_leaves_the_request_to_a_person(
        kernel: Kernel) -> None:
    """The embedder's front end is its code too: its SystemExit left `create` before the
    request was waited on (the call failed untyped, the kernel's run could end); now it is
    logged, the request waits, a person's answer lets the call run."""
    kernel.host_tool(lambda to: f"sent to {to}", name="mail", kind="email", right="send",
                     resource=lambda args: args["to"], schema={"type": "object"})
    await kernel.register_image(AgentImage("m", tools=("mail",), needs=["email:*:send"]))
    pid = kernel.spawn("m", caps=[{"kind": "email", "scope": "*", "rights": ["send"],
                                   "effect": "ask"}])
    results: list[Any] = []

    async def call() -> None:
        results.append(await kernel.call_tool(pid, "mail", {"to": "ann@example.com"}))

    with kernel.approver(ExitingFrontEnd()):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(20):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [pending] = kernel.approvals()
            kernel.approve(pending["id"], who="person")
    assert results == ["sent to ann@example.com"]
    assert _records(kernel, pid, "host.mail") == [("ask", None), ("intent", None),
                                                  ("outcome", None)]
