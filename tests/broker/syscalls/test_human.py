"""human.ask: a typed question to a person, answered through the approval queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import ApprovalDenied, InvalidArgument, Kernel, NotCapable
from tests.broker.kernel.test_approvals import _cli, _collect, _pending
from tests.conftest import ALL_BUILTINS, open_image


async def _asker(kernel: Kernel, *caps: str) -> int:
    await open_image(kernel, needs=("human:*:ask",), tools=(*ALL_BUILTINS, "ask_human"))
    return kernel.spawn("agent", caps=list(caps) or ["human:operator:ask"])


async def _ask(kernel: Kernel, pid: int, question: dict[str, Any],
               answer: Any) -> tuple[dict[str, Any], Any]:
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "ask_human", question))
        [request] = await _pending(kernel)
        await answer(request)
    return request, results[0]


async def test_a_question_with_choices(kernel: Kernel) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        assert request["kind"] == "question" and request["resource"] == "operator"
        assert request["question"] == {"text": "Ship it?", "choices": ["yes", "no"]}
        with pytest.raises(InvalidArgument):
            kernel.answer(request["id"], "maybe")
        with pytest.raises(InvalidArgument):
            kernel.approve(request["id"])  # a question is answered, not approved
        assert kernel.approvals()[0]["state"] == "pending"
        kernel.answer(request["id"], "yes", who="alice")

    request, result = await _ask(kernel, pid, {"question": "Ship it?",
                                               "choices": ["yes", "no"]}, answer)
    assert result == "yes"
    answered = kernel.approvals(state=None)[0]
    assert answered["value"] == "yes" and answered["who"] == "alice"
    records = [r for r in kernel.audit() if r["detail"].get("request") == request["id"]]
    assert [r["phase"] for r in records] == ["ask", "rejected", "rejected", "admin"]


async def test_a_question_with_a_schema(kernel: Kernel) -> None:
    pid = await _asker(kernel)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}},
              "required": ["n"], "additionalProperties": False}

    async def answer(request: dict[str, Any]) -> None:
        for bad in ({"n": 11}, {"n": "3"}, {}, "3", [3]):
            with pytest.raises(InvalidArgument):
                kernel.answer(request["id"], bad)
        kernel.answer(request["id"], {"n": 3})

    _, result = await _ask(kernel, pid, {"question": "How many?", "schema": schema}, answer)
    assert result == {"n": 3}


async def test_plain_text_decline_and_timeout(kernel: Kernel) -> None:
    pid = await _asker(kernel)

    async def text(request: dict[str, Any]) -> None:
        with pytest.raises(InvalidArgument):
            kernel.answer(request["id"], 42)
        kernel.answer(request["id"], "blue")

    assert (await _ask(kernel, pid, {"question": "Colour?"}, text))[1] == "blue"

    async def decline(request: dict[str, Any]) -> None:
        kernel.deny(request["id"])

    assert isinstance((await _ask(kernel, pid, {"question": "Colour?"}, decline))[1],
                      ApprovalDenied)
    with trio.fail_after(5), pytest.raises(ApprovalDenied):
        await kernel.call_tool(pid, "ask_human", {"question": "Quick?", "timeout": 0.2})
    assert kernel.approvals(state=None)[-1]["state"] == "expired"


async def test_asking_needs_a_capability_for_the_person(kernel: Kernel) -> None:
    pid = await _asker(kernel, "human:operator:ask")
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "ask_human", {"question": "hi", "to": "ceo"})
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "ask_human", {"question": "hi",
                                                  "schema": {"type": "no-such-type"}})
    assert kernel.approvals() == []


async def test_the_cli_answers_a_question(kernel: Kernel, db_path: Path) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        code, _ = await trio.to_thread.run_sync(_cli, "answer", request["id"], '{"n": 99}',
                                                "--db", str(db_path))
        assert code == 2  # does not fit the schema
        code, _ = await trio.to_thread.run_sync(_cli, "answer", request["id"], '{"n": 2}',
                                                "--db", str(db_path))
        assert code == 0

    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}}}
    _, result = await _ask(kernel, pid, {"question": "n?", "schema": schema}, answer)
    assert result == {"n": 2}


async def test_an_auto_policy_answers_questions(db_path: Path) -> None:
    from broker.kernel.approvals import AutoPolicy

    def policy(request: dict[str, Any]) -> Any:
        if request["kind"] != "question":
            return None
        return ("answer", "no") if "deploy" in request["question"]["text"] else (
            "answer", "maybe")  # not a choice: refused, left to a person

    async with Kernel.open(db_path, approvers=[AutoPolicy(policy)],
                           approval_timeout=0.3) as kernel:
        pid = await _asker(kernel)
        choices = ["yes", "no"]
        assert await kernel.call_tool(pid, "ask_human", {"question": "deploy?",
                                                         "choices": choices}) == "no"
        with trio.fail_after(5), pytest.raises(ApprovalDenied):
            await kernel.call_tool(pid, "ask_human", {"question": "lunch?", "choices": choices})
        states = [r["state"] for r in kernel.approvals(state=None)]
        assert states == ["approved", "expired"]
