"""Red team 6: the host's answer to a question (`Kernel.answer`) that JSON cannot keep as it
is. A set, an object or a tuple key raised an untyped TypeError out of `answer` (nothing
recorded); keys of two types were taken: `{1: "a", "1": "b"}` checked against the question's
schema as it is, and the process got `{"1": "b"}`, an answer nobody gave. Severity: low (the
host's own API; the CLI and the page read JSON text). Now `InvalidArgument`, refused on the
record (`approval.answer`, rejected), the question still pending for a good answer."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from broker import AgentImage, InvalidArgument, Kernel
from tests.broker.kernel.test_host_values_unstorable_redteam6 import UNSTORABLE


@pytest.mark.parametrize("name", [n for n in UNSTORABLE if n != "lone surrogate"])
async def test_an_answer_json_cannot_keep_is_refused_typed_on_the_record(
        kernel: Kernel, name: str) -> None:
    await kernel.register_image(AgentImage("a", tools=("ask_human",), needs=("human:*:ask",)))
    pid = kernel.spawn("a", caps=["human:*:ask"])
    got: list[Any] = []

    async def ask() -> None:
        got.append(await kernel.call_tool(pid, "ask_human", {"question": "q", "schema": {}}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        with trio.fail_after(30):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        with pytest.raises(InvalidArgument, match="not plain JSON"):
            kernel.answer(request["id"], {"v": UNSTORABLE[name]})
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == ("approval.answer", "rejected")
        assert [r["id"] for r in kernel.approvals()] == [request["id"]]  # still pending
        kernel.answer(request["id"], {"v": {"1": "b"}})  # the neighbour: a plain answer
    assert got == [{"v": {"1": "b"}}]
    assert kernel.verify_audit()[1] == []
