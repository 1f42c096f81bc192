"""No model output ends a process (unless it spends the failure budget): arguments too deep,
too big or badly encoded, and replies with too many calls, come back to the model as typed
errors. Through the real SDKs, against a loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from tests.broker.planner.replay import replay_server
from tests.broker.planner.replies import raw_reply, reply
from tests.broker.planner.test_chat import KINDS, settings, tool_results

pytest.importorskip("openai")
pytest.importorskip("anthropic")

TOOLS = ("now", "make_dir")
CAPS = ["clock:*:read", "fs:/d/**:write"]
# Past what any Python's json reads (3.11 stops short of 1,000 levels, 3.13 reads 9,000: its C
# recursion limit is higher) and under the argument limit, 100,000 characters: an SDK cannot
# parse a reply holding it, and a call's arguments holding it are refused for their depth alone.
DEEP = "[" * 40_000 + "]" * 40_000


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")


async def run(kernel: Kernel, kind: str, responses: list[Any], **extra: Any
              ) -> tuple[dict[str, Any], Any]:
    (Path(kernel.fs.root) / "d").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    with replay_server(responses) as api:
        await kernel.register_image(AgentImage(
            f"m-{kind}", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url, **extra)))
        pid = kernel.spawn(f"m-{kind}", caps=CAPS, args="go")
        status = await kernel.wait(pid, timeout=60)
    return {**status, "pid": pid}, api


def assistant_calls(kind: str, request: dict[str, Any]) -> list[Any]:
    """The calls of the last assistant message of a request, as sent."""
    message = [m for m in request["messages"] if m["role"] == "assistant"][-1]
    if kind == "openai":
        return [c["function"]["arguments"] for c in message.get("tool_calls", [])]
    return [b["input"] for b in message["content"] if b["type"] == "tool_use"]


@pytest.mark.parametrize("kind", KINDS)
async def test_deeply_nested_arguments_do_not_end_the_process(kernel: Kernel, kind: str
                                                              ) -> None:
    too_deep = json.dumps({"path": "/d/x", "n": json.loads("[" * 100 + "]" * 100)})
    status, api = await run(kernel, kind, [
        raw_reply(kind, "c_deep", "make_dir", '{"a": ' + DEEP + "}"),
        reply(kind, "", [("c_100", "make_dir", too_deep), ("c_ok", "now", {})]),
        reply(kind, "done")])
    assert (status["state"], status["exit_code"], status["result"]) == ("exited", 0, "done")
    results = tool_results(kind, api.requests[-1])
    assert results["c_100"]["error"] == "INVALID_ARGUMENT"
    assert "nested" in results["c_100"]["message"]
    assert isinstance(results["c_ok"], float)  # its neighbour in the same reply ran
    if kind == "openai":
        # 40,000 nested arrays in the arguments' text: that call's result is the error.
        assert results["c_deep"]["error"] == "INVALID_ARGUMENT"
        assert len(api.requests) == 3
    else:
        # The SDK cannot parse the reply at all: it is asked again, within the budget.
        assert "c_deep" not in results and len(api.requests) == 3
        assert api.requests[1] == api.requests[0]
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("kind", KINDS)
async def test_nesting_forever_spends_the_failure_budget(kernel: Kernel, kind: str) -> None:
    bad = raw_reply(kind, "c", "make_dir", '{"a": ' + DEEP + "}")
    status, api = await run(kernel, kind, [bad] * 3, max_failures=3)
    assert (status["exit_code"], status["result"]["error"]) == (1, "LIMIT_EXCEEDED")
    assert len(api.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_big_and_badly_encoded_arguments_are_invalid(kernel: Kernel, kind: str) -> None:
    big = {"path": "/d/" + "a" * 5000}
    lone = '{"path": "/d/\\ud800"}'  # a lone surrogate: no UTF-8 encodes it
    status, api = await run(kernel, kind, [
        reply(kind, "text with a lone \ud800 surrogate", [
            ("c_big", "make_dir", big), ("c_lone", "make_dir", lone),
            ("c_ok", "make_dir", {"path": "/d/fine"})]),
        reply(kind, "done")], max_argument_chars=4000)
    assert (status["exit_code"], status["result"]) == (0, "done")
    results = tool_results(kind, api.requests[-1])
    assert results["c_big"]["error"] == "INVALID_ARGUMENT"
    assert "exceed the limit of 4000" in results["c_big"]["message"]
    assert results["c_lone"]["error"] == "INVALID_ARGUMENT"
    assert "UTF-8" in results["c_lone"]["message"]
    assert results["c_ok"] is None  # made
    # The refused arguments are not kept in the conversation.
    sent = assistant_calls(kind, api.requests[-1])
    assert all(len(json.dumps(a)) < 100 for a in sent[:2])
    history = kernel.process(status["pid"]).history
    assert [o.action.args["path"] for o in history] == ["/d/fine"]


@pytest.mark.parametrize("kind", KINDS)
async def test_five_thousand_calls_in_one_reply_run_none_and_say_why(kernel: Kernel, kind: str
                                                                     ) -> None:
    flood = [(f"c{i}", "now", {}) for i in range(5000)]
    written: list[int] = []
    save = kernel.store.save_checkpoint

    def counting(pid: int, step: int, state: dict[str, Any], observation: Any = None,
                 turns: Any = None) -> None:
        written.append(len(json.dumps(state)) + len(json.dumps(turns or {})))
        save(pid, step, state, observation, turns)

    kernel.store.save_checkpoint = counting  # type: ignore[method-assign]
    status, api = await run(kernel, kind, [reply(kind, "", flood), reply(kind, "done")])
    assert (status["exit_code"], status["result"]) == (0, "done")
    results = tool_results(kind, api.requests[1])
    assert len(results) == 32 == len(assistant_calls(kind, api.requests[1]))
    assert {r["error"] for r in results.values()} == {"LIMIT_EXCEEDED"}
    assert "at most 32 tool calls" in results["c0"]["message"]
    assert not any(r["syscall"] == "clock.now" for r in kernel.audit())  # none was run
    assert sum(written) < 64_000


def _openai(message: Any = None, **top: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **top}


# Replies a server answered 200 with, in shapes no SDK type describes (the SDKs keep what
# they cannot type as it came): each must be asked again, never end the process.
ODD_REPLIES = {
    "openai": {
        "choices is a number": _openai(choices=5),
        "choices is an object": _openai(choices={"0": {"message": {"content": "x"}}}),
        "tool_calls is a number": _openai({"role": "assistant", "content": None,
                                           "tool_calls": 5}),
        "tool_calls is an object": _openai({"role": "assistant", "content": None,
                                            "tool_calls": {"id": "c"}}),
        "a body that is not JSON": b"<html>502 Bad Gateway</html>",
    },
    "anthropic": {
        "a body that is not JSON": b"<html>502 Bad Gateway</html>",
    },
}


@pytest.mark.parametrize(("kind", "odd"), [(k, o) for k in KINDS for o in ODD_REPLIES[k]])
async def test_a_reply_of_an_odd_shape_is_asked_again(kernel: Kernel, kind: str, odd: str
                                                       ) -> None:
    status, api = await run(kernel, kind, [
        ODD_REPLIES[kind][odd], reply(kind, "", [("c_ok", "now", {})]), reply(kind, "done")])
    assert (status["state"], status["exit_code"], status["result"]) == ("exited", 0, "done")
    assert len(api.requests) == 3
    assert api.requests[1] == api.requests[0]  # asked again, the same question
    assert isinstance(tool_results(kind, api.requests[2])["c_ok"], float)  # then it ran
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("kind", KINDS)
async def test_odd_replies_forever_spend_the_failure_budget(kernel: Kernel, kind: str
                                                            ) -> None:
    odd = ODD_REPLIES[kind]["a body that is not JSON"]
    status, api = await run(kernel, kind, [odd] * 3, max_failures=3)
    assert (status["exit_code"], status["result"]["error"]) == (1, "LIMIT_EXCEEDED")
    assert len(api.requests) == 3
