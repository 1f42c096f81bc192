"""Host tools (issue 12): the embedder's own functions behind the same capabilities,
approvals, budgets and audit as a syscall, registered per kernel. A real kernel over real
SQLite; the functions are the embedder's (here, an outbox the kernel hands them as state)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import BaseModel

from broker import (
    AgentImage,
    ApprovalDenied,
    Budget,
    Cancelled,
    Conflict,
    HostCall,
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
    NotFound,
    ToolFailed,
)
from broker.store import args_hash
from tests.broker.kernel.host_fixtures import MAILER, Outbox, count_mail, email_calls, send_email

MAIL = {"to": "bob@example.com", "subject": "hi"}


async def mailer(db: Path, outbox: Outbox, *caps: Any, tools: tuple[Any, ...] = (),
                 **open_options: Any) -> Any:
    """A kernel with the mail tools (and `tools`), and a process granted `caps`."""
    kernel_cm = Kernel.open(db, host_tools=[send_email, count_mail, *tools], host_state=outbox,
                            **open_options)
    return kernel_cm


async def _pending(kernel: Kernel, count: int = 1) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        while len(kernel.approvals()) < count:
            await trio.sleep(0.01)
    return kernel.approvals()


# -- the call: checked, run with its context, audited ----------------------------------------


async def test_an_allowed_call_runs_the_function_with_its_context_and_is_audited(
        db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*@example.com:send"])
        given = dict(MAIL)
        assert await kernel.call_tool(pid, "send_email", given) == {"sent": 1,
                                                                      "to": "bob@example.com"}
        assert given == MAIL  # the caller's arguments as given: no default filled in
        [call] = outbox.calls
        intent, outcome = email_calls(kernel, pid)
        assert (call.pid, call.tool, call.args, call.call) == (pid, "send_email", MAIL,
                                                               intent["seq"])
        assert call.state is outbox and outbox.sent == [{**MAIL, "body": ""}]
        assert intent["phase"] == "intent" and intent["resource"] == "bob@example.com"
        assert intent["args_hash"] == args_hash(MAIL) and intent["cap_id"].startswith("cap_")
        assert intent["tool"] == "send_email" and intent["inv"] is not None
        assert outcome["phase"] == "outcome" and outcome["detail"]["ok"] is True
        assert outcome["detail"]["intent"] == intent["seq"]
        assert kernel.verify_audit()[1] == []
        listed = {t["name"]: t for t in kernel.list_tools(pid)}
        assert listed["send_email"]["lang"] == "host"
        assert listed["send_email"]["description"] == "Send an email."
        assert listed["send_email"]["schema"]["required"] == ["to", "subject"]


async def test_capabilities_scope_it_by_recipient(db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*@example.com:send"])
        with pytest.raises(NotCapable, match=r"email:send on 'eve@evil\.com'"):
            await kernel.call_tool(pid, "send_email", {"to": "eve@evil.com", "subject": "x"})
        # A suffix that is not the domain is not in scope either.
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "send_email", {"to": "eve@notexample.com",
                                                       "subject": "x"})
        assert outbox.sent == []
        [denied, _] = email_calls(kernel, pid)
        assert denied["phase"] == "denied" and denied["resource"] == "eve@evil.com"
        assert denied["detail"]["error"] == "NOT_CAPABLE"
        # The neighbour call in scope still works; the right is per kind and right.
        await kernel.call_tool(pid, "send_email", MAIL)
        with pytest.raises(NotCapable, match="email:read"):
            await kernel.call_tool(pid, "count_mail", {"folder": "sent"})
        assert len(outbox.sent) == 1


async def test_ask_shows_the_exact_arguments_and_once_binds_to_them(db_path: Path) -> None:
    outbox = Outbox()
    ask = {"kind": "email", "scope": "*@example.com", "rights": ["send"], "effect": "ask"}
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=[ask])
        results: list[Any] = []

        async def call(args: dict[str, Any]) -> None:
            try:
                results.append(await kernel.call_tool(pid, "send_email", args))
            except ApprovalDenied as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, MAIL)
            [request] = await _pending(kernel)
            assert request["syscall"] == "host.send_email" and request["tool"] == "send_email"
            assert request["args"] == MAIL and request["args_hash"] == args_hash(MAIL)
            assert request["resource"] == "bob@example.com"
            assert request["right"] == "email:send"
            assert outbox.sent == []  # nothing ran before a person answered
            kernel.approve(request["id"])
        assert results == [{"sent": 1, "to": "bob@example.com"}]
        assert outbox.calls[0].args == MAIL  # the arguments as approved
        # The grant was for exactly those arguments, once: other ones (and the same again)
        # ask again.
        other = {**MAIL, "subject": "wire the money"}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, other)
            [request] = await _pending(kernel)
            assert request["args"] == other
            kernel.deny(request["id"])
        assert isinstance(results[-1], ApprovalDenied)
        assert len(outbox.sent) == 1
        intents = [r for r in email_calls(kernel, pid) if r["phase"] == "intent"]
        assert len(intents) == 1 and intents[0]["detail"]["approval"]
        assert [r["phase"] for r in kernel.audit(pid) if r["syscall"] == "host.send_email"
                ].count("ask") == 2


async def test_deny_rules_one_shot_grants_and_budgets_apply(db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        deny = {"kind": "email", "scope": "ceo@example.com", "rights": ["send"],
                "effect": "deny"}
        once = {"kind": "email", "scope": "*@example.com", "rights": ["send"], "uses": 1}
        pid = kernel.spawn("mailer", caps=[once, deny])
        with pytest.raises(NotCapable, match="denied by a rule"):
            await kernel.call_tool(pid, "send_email", {"to": "CEO@example.com", "subject": "x"})
        await kernel.call_tool(pid, "send_email", MAIL)
        with pytest.raises(NotCapable):  # the one use is spent
            await kernel.call_tool(pid, "send_email", MAIL)
        assert len(outbox.sent) == 1
        await kernel.register_image(AgentImage("frugal", tools=("send_email",),
                                               needs=["email:*:send"],
                                               budget=Budget(tool_calls=1)))
        frugal = kernel.spawn("frugal", caps=["email:*:send"])
        await kernel.call_tool(frugal, "send_email", MAIL)
        with pytest.raises(LimitExceeded, match="tool_calls budget"):
            await kernel.call_tool(frugal, "send_email", MAIL)
        assert kernel.process(frugal).state.value == "killed"
        assert len(outbox.sent) == 2


async def test_a_raw_syscall_name_never_reaches_a_host_tool(db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*:send"])
        proc = kernel.process(pid)
        for name in ("host.send_email", "send_email", "email.send"):
            with pytest.raises(NotCapable, match="no such syscall"):
                await kernel.dispatcher.run(proc, None, name, MAIL)
        assert outbox.sent == []
        unknown = [r for r in kernel.audit(pid) if r["phase"] == "denied"]
        assert [r["syscall"] for r in unknown] == ["unknown"] * 3
        assert unknown[0]["detail"]["name"] == "host.send_email"
        await kernel.call_tool(pid, "send_email", MAIL)  # the tool route, checked, works
        assert len(outbox.sent) == 1


async def test_registration_is_per_kernel(tmp_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(tmp_path / "a.db", outbox) as a, \
            Kernel.open(tmp_path / "b.db") as b:
        await a.register_image(MAILER)
        with pytest.raises(InvalidArgument, match="no builtin tool 'send_email'"):
            await b.register_image(AgentImage("mailer", tools=("send_email",)))
        with pytest.raises(InvalidArgument, match="no host tool of kind 'email'"):
            await b.register_image(AgentImage("mailer", needs=["email:*:send"]))
        assert "send_email" not in b.host_tools and "send_email" in a.host_tools
        # The same definition registered in another kernel gets that kernel's own state.
        other = Outbox()
        b.host_tool(send_email, state=other)
        await b.register_image(AgentImage("mailer", tools=("send_email",),
                                          needs=["email:*:send"]))
        pid = b.spawn("mailer", caps=["email:*:send"])
        await b.call_tool(pid, "send_email", MAIL)
        assert len(other.sent) == 1 and outbox.sent == []


class Transfer(BaseModel):
    account: str
    cents: int


async def test_a_decorator_on_the_kernel_and_a_schema_from_pydantic_models(
        kernel: Kernel) -> None:
    moved: list[Transfer] = []

    @kernel.host_tool(kind="bank", right="transfer", resource=lambda a: a["req"]["account"])
    def transfer(call: HostCall, req: Transfer, memo: str = "") -> dict[str, Any]:
        moved.append(req)
        return {"ok": True, "memo": memo}

    assert transfer.name == "transfer" and "$defs" in transfer.schema
    await kernel.register_image(AgentImage("payer", tools=("transfer",),
                                           needs=["bank:acct-*:transfer"]))
    pid = kernel.spawn("payer", caps=["bank:acct-*:transfer"])
    req = {"req": {"account": "acct-1", "cents": 250}}
    assert await kernel.call_tool(pid, "transfer", req) == {"ok": True, "memo": ""}
    assert moved == [Transfer(account="acct-1", cents=250)]
    with pytest.raises(InvalidArgument):  # the schema (from the model) is checked first
        await kernel.call_tool(pid, "transfer", {"req": {"account": "acct-1", "cents": "x"}})
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "transfer", {"req": {"account": "other", "cents": 1}})
    assert len(moved) == 1


async def test_replay_feeds_back_the_recorded_result_without_running_it(
        db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*:send"])
        await kernel.call_tool(pid, "send_email", MAIL)
        inv = next(r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call")
        replayed = await kernel.replay(inv)
        assert replayed["same"] is True and replayed["syscalls"] == 1
        assert len(outbox.sent) == 1  # not sent again


# -- bad input: a typed error, audited, and the broker keeps serving --------------------------


def _registrations(kernel: Kernel) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["syscall"] == "host.register"]


async def test_bad_registrations_are_typed_audited_and_harmless(db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        with pytest.raises(Conflict, match="registered already"):
            kernel.host_tool(send_email)
        with pytest.raises(Conflict, match="builtin tool"):
            kernel.host_tool(lambda path: path, name="read_file", kind="files", right="read",
                             schema={"type": "object"})
        with pytest.raises(InvalidArgument, match="schema"):
            kernel.host_tool(lambda: 1, name="bad_schema", kind="x", right="y",
                             schema={"type": "object", "properties": {"a": {"$ref": "http://x"}}})
        with pytest.raises(InvalidArgument, match="its own"):
            kernel.host_tool(lambda: 1, name="fs_like", kind="fs", right="read",
                             schema={"type": "object"})
        records = _registrations(kernel)
        assert [r["phase"] for r in records] == ["admin", "admin", "rejected", "rejected",
                                                 "rejected", "rejected"]
        assert [r["resource"] for r in records[2:]] == ["send_email", "read_file",
                                                        "bad_schema", "fs_like"]
        assert records[2]["detail"]["error"] == "CONFLICT"
        assert records[4]["detail"]["error"] == "INVALID_ARGUMENT"
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*:send"])
        await kernel.call_tool(pid, "send_email", MAIL)  # still serving
        assert kernel.verify_audit()[1] == []


async def test_a_taken_name_is_replaced_only_when_asked(kernel: Kernel) -> None:
    @kernel.host_tool(kind="greet", right="say")
    def hello(name: str) -> str:
        return f"hello {name}"

    def other(name: str) -> str:
        return f"bonjour {name}"

    with pytest.raises(Conflict, match="replace=True"):
        kernel.host_tool(other, name="hello", kind="greet", right="say")
    await kernel.register_image(AgentImage("greeter", tools=("hello",), needs=["greet:*:say"]))
    pid = kernel.spawn("greeter", caps=["greet:*:say"])
    assert await kernel.call_tool(pid, "hello", {"name": "ann"}) == "hello ann"
    kernel.host_tool(other, name="hello", kind="greet", right="say", replace=True)
    assert await kernel.call_tool(pid, "hello", {"name": "ann"}) == "bonjour ann"
    assert [(r["phase"], r["detail"].get("replaced")) for r in _registrations(kernel)] == [
        ("admin", False), ("rejected", None), ("admin", True)]


@pytest.mark.parametrize(("resource", "message"), [
    (lambda a: 1 / 0, "resource function failed"),
    (lambda a: 42, "must be a str"),
    (lambda a: "*@example.com", "may not start or end with"),
    (lambda a: "x" * 5000, "1 to 1024 characters"),
])
async def test_a_bad_resource_is_refused_before_anything_runs(
        kernel: Kernel, resource: Any, message: str) -> None:
    ran: list[str] = []
    kernel.host_tool(lambda to: ran.append(to), name="notify", kind="chat", right="post",
                     resource=resource, schema={"type": "object"})
    kernel.host_tool(lambda to: ran.append(to) or "ok", name="neighbour", kind="chat",
                     right="post", resource="to", schema={"type": "object"})
    await kernel.register_image(AgentImage("chat", tools=("notify", "neighbour"),
                                           needs=["chat:*:post"]))
    pid = kernel.spawn("chat", caps=["chat:*:post"])
    with pytest.raises(InvalidArgument, match=message):
        await kernel.call_tool(pid, "notify", {"to": "x"})
    assert ran == []
    [rejected] = [r for r in kernel.audit(pid) if r["syscall"] == "host.notify"]
    assert rejected["phase"] == "rejected" and rejected["detail"]["error"] == "INVALID_ARGUMENT"
    assert await kernel.call_tool(pid, "neighbour", {"to": "y"}) == "ok"


async def test_a_function_that_blocks_past_its_deadline_is_abandoned(kernel: Kernel) -> None:
    release = threading.Event()

    @kernel.host_tool(kind="db", right="query", deadline=0.5)
    def slow_query(sql: str) -> list[Any]:
        release.wait(30)  # a sync function stuck in a call: trio must not wait for it
        return []

    @kernel.host_tool(kind="db", right="query", deadline=0.5)
    async def spin(sql: str) -> list[Any]:
        await trio.sleep_forever()
        return []

    @kernel.host_tool(kind="db", right="query")
    def fast_query(sql: str) -> list[Any]:
        return [sql]

    await kernel.register_image(AgentImage("q", tools=("slow_query", "spin", "fast_query"),
                                           needs=["db:*:query"]))
    pid = kernel.spawn("q", caps=["db:*:query"])
    try:
        for name in ("slow_query", "spin"):
            started = time.monotonic()
            with pytest.raises(LimitExceeded, match=r"deadline of 0\.5 s"):
                await kernel.call_tool(pid, name, {"sql": "select 1"})
            assert time.monotonic() - started < 5
            [outcome] = [r for r in kernel.audit(pid) if r["syscall"] == f"host.{name}"
                         and r["phase"] == "outcome"]
            assert outcome["detail"]["error"] == "LIMIT_EXCEEDED"
        # The broker keeps serving while the abandoned thread is still stuck.
        assert await kernel.call_tool(pid, "fast_query", {"sql": "select 2"}) == ["select 2"]
    finally:
        release.set()


async def test_an_exception_is_tool_failed_with_a_short_message_and_no_traceback(
        kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    @kernel.host_tool(kind="chat", right="post")
    def post(text: str) -> None:
        raise RuntimeError("secret-ish detail " + "x" * (1 << 20))

    @kernel.host_tool(kind="chat", right="post")
    def claims_cancelled(text: str) -> None:
        raise Cancelled("the broker cancelled this (it did not)")

    @kernel.host_tool(kind="chat", right="post")
    def refuses(text: str) -> None:
        raise InvalidArgument("no such channel")  # the embedder's own typed error: kept

    await kernel.register_image(AgentImage("c", tools=("post", "claims_cancelled", "refuses"),
                                           needs=["chat:*:post"]))
    pid = kernel.spawn("c", caps=["chat:*:post"])
    with caplog.at_level(logging.ERROR, logger="libos.host_tools"), \
            pytest.raises(ToolFailed) as failed:
        await kernel.call_tool(pid, "post", {"text": "hi"})
    assert type(failed.value) is ToolFailed and failed.value.code == "TOOL_FAILED"
    assert failed.value.message.startswith("host tool post failed: RuntimeError: secret-ish")
    assert len(failed.value.message) < 300 and "Traceback" not in failed.value.message
    [outcome] = [r for r in kernel.audit(pid) if r["syscall"] == "host.post"
                 and r["phase"] == "outcome"]
    assert outcome["detail"]["error"] == "TOOL_FAILED"
    assert outcome["detail"]["message"] == failed.value.message
    outcomes = [r for r in kernel.audit(pid) if r["phase"] == "outcome"]
    assert all(len(str(r["detail"])) < 1000 for r in outcomes)
    assert not any("Traceback" in str(r["detail"]) for r in kernel.audit(pid))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert 'raise RuntimeError("secret-ish detail "' in logged  # the traceback is in the log
    assert len(logged) < 20_000
    with pytest.raises(ToolFailed, match="claiming 'CANCELLED'"):
        await kernel.call_tool(pid, "claims_cancelled", {"text": "hi"})
    with pytest.raises(InvalidArgument, match="no such channel"):
        await kernel.call_tool(pid, "refuses", {"text": "hi"})


class Shape(BaseModel):
    sides: int


@pytest.mark.parametrize(("value", "error", "message"), [
    ({1, 2}, ToolFailed, "not plain data"),
    (object(), ToolFailed, "not plain data"),
    ({1: "int key"}, ToolFailed, "not plain data"),
    ((1, 2), ToolFailed, "not plain data"),
    (1 << 70, ToolFailed, "not plain data"),
    ("x" * (2 << 20), LimitExceeded, "returned"),
])
async def test_a_result_that_is_not_plain_data_is_the_tools_failure(
        kernel: Kernel, value: Any, error: type[Exception], message: str) -> None:
    kernel.host_tool(lambda: value, name="odd", kind="misc", right="get",
                     schema={"type": "object"})
    kernel.host_tool(lambda: Shape(sides=3), name="model", kind="misc", right="get",
                     schema={"type": "object"})
    await kernel.register_image(AgentImage("o", tools=("odd", "model"), needs=["misc:*:get"]))
    pid = kernel.spawn("o", caps=["misc:*:get"])
    with pytest.raises(error, match=message):
        await kernel.call_tool(pid, "odd", {})
    [outcome] = [r for r in kernel.audit(pid) if r["syscall"] == "host.odd"
                 and r["phase"] == "outcome"]
    assert outcome["detail"]["ok"] is False
    assert await kernel.call_tool(pid, "model", {}) == {"sides": 3}  # a model is dumped


async def test_a_tool_a_kernel_no_longer_has_is_not_found(db_path: Path) -> None:
    outbox = Outbox()
    async with await mailer(db_path, outbox) as kernel:
        await kernel.register_image(MAILER)
        pid = kernel.spawn("mailer", caps=["email:*:send"])
    async with Kernel.open(db_path) as kernel:  # this broker was given no host tools
        assert "send_email" not in {t["name"] for t in kernel.list_tools(pid)}
        with pytest.raises(NotFound, match="not registered in this kernel"):
            await kernel.call_tool(pid, "send_email", MAIL)
        kernel.host_tool(send_email, state=outbox)  # registered later: found
        await kernel.call_tool(pid, "send_email", MAIL)
        assert len(outbox.sent) == 1
