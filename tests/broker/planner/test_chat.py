"""Model planners through the real SDK HTTP path, against a loopback server that replays
recorded conversations (OpenAI chat completions and Anthropic messages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, Kernel
from broker.planner.factory import planner_from_settings
from tests.broker.kernel.crashing import crash_after, crashing, outcome_of
from tests.broker.planner.replay import load, replay_server

pytest.importorskip("openai")
pytest.importorskip("anthropic")

KINDS = ("openai", "anthropic")
TOOLS = ("make_dir", "read_file", "write_file")
CAPS = ["fs:/notes/**:read,write"]
GOAL = "Write hello to /notes/a.txt and read it back."


def settings(kind: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "model": f"{kind}-test-model", "api_key_env": "LIBOS_TEST_KEY",
            "base_url": url + ("/v1" if kind == "openai" else ""), "max_retries": 0,
            "timeout": 20, **extra}


def tool_results(kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """The tool results a request carries, by call id, decoded."""
    out = {}
    for message in request["messages"]:
        if kind == "openai" and message["role"] == "tool":
            out[message["tool_call_id"]] = json.loads(message["content"])
        elif kind == "anthropic" and isinstance(message["content"], list):
            for block in message["content"]:
                if block["type"] == "tool_result":
                    out[block["tool_use_id"]] = json.loads(block["content"])
    return out


def offered(kind: str, request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if kind == "openai":
        return {t["function"]["name"]: t["function"]["parameters"] for t in request["tools"]}
    return {t["name"]: t["input_schema"] for t in request["tools"]}


def call_id(kind: str, name: str) -> str:
    return ("call_" if kind == "openai" else "toolu_") + name


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_recorded_conversation_drives_a_process(kernel: Kernel, kind: str) -> None:
    with replay_server(load(f"{kind}_conversation.json")) as api:
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        pid = kernel.spawn("notes", caps=CAPS, args=GOAL)
        status = await kernel.wait(pid, timeout=30)

    assert status["state"] == "exited", status
    assert (status["exit_code"], status["result"]) == (0, "Done: /notes/a.txt says hello.")
    assert len(api.requests) == 6
    first = api.requests[0]
    # The process's tool table, as JSON-Schema tools, exactly.
    table = {t["name"]: t["schema"] for t in kernel.list_tools(pid)}
    assert offered(kind, first) == table
    assert first["model"] == f"{kind}-test-model"
    if kind == "openai":
        assert api.paths[0] == "/v1/chat/completions"
        assert api.headers[0]["authorization"] == "Bearer sk-test-key"
        assert first["messages"][0]["role"] == "system"
        assert first["messages"][1] == {"role": "user", "content": GOAL}
    else:
        assert api.paths[0] == "/v1/messages"
        # This SDK version sends the key as a bearer token; older ones used x-api-key.
        assert "sk-test-key" in (api.headers[0].get("x-api-key"),
                                 api.headers[0].get("authorization", "").removeprefix("Bearer "))
        assert "libos" in first["system"]
        assert first["messages"] == [{"role": "user", "content": GOAL}]

    # Three calls in one reply: each run and observed, all results before the next request,
    # which repeats the model's reply with its calls.
    results = tool_results(kind, api.requests[1])
    if kind == "openai":
        reply = api.requests[1]["messages"][2]
        assert reply["content"] == "Making the notes directory."
        assert [c["id"] for c in reply["tool_calls"]] == ["call_mk", "call_wr", "call_rd"]
        assert json.loads(reply["tool_calls"][1]["function"]["arguments"]) == {
            "path": "/notes/a.txt", "data": "hello"}
        assert [m["role"] for m in api.requests[1]["messages"]] == [
            "system", "user", "assistant", "tool", "tool", "tool"]
    else:
        reply = api.requests[1]["messages"][1]
        assert reply["role"] == "assistant"
        assert reply["content"][0] == {"type": "text", "text": "Making the notes directory."}
        assert [b["id"] for b in reply["content"][1:]] == ["toolu_mk", "toolu_wr", "toolu_rd"]
        assert reply["content"][2]["input"] == {"path": "/notes/a.txt", "data": "hello"}
        assert [m["role"] for m in api.requests[1]["messages"]] == [
            "user", "assistant", "user"]
    assert results == {call_id(kind, "mk"): None, call_id(kind, "wr"): 5,
                       call_id(kind, "rd"): "hello"}
    assert [o.action.name for o in kernel.process(pid).history[:3]] == list(
        ("make_dir", "write_file", "read_file"))
    # Bad output comes back as typed errors, and the process carries on.
    expected = {"bad_json": "INVALID_ARGUMENT", "unknown": "NOT_FOUND",
                "secret": "NOT_CAPABLE", "schema": "INVALID_ARGUMENT"}
    for n, (name, code) in enumerate(expected.items(), start=2):
        result = tool_results(kind, api.requests[n])[call_id(kind, name)]
        assert result["error"] == code, result
        assert result["message"]
    if kind == "anthropic":
        errors = [b for m in api.requests[5]["messages"] if isinstance(m["content"], list)
                  for b in m["content"] if b["type"] == "tool_result" and b["is_error"]]
        assert len(errors) == 4

    # The broker checked and audited what reached it; the bad JSON never did.
    audit = kernel.audit(pid)
    assert any(r["phase"] == "denied" and r["resource"] == "/secrets/key.txt" for r in audit)
    assert [o.action.name for o in kernel.process(pid).history] == [
        "make_dir", "write_file", "read_file", "delete_everything", "read_file", "write_file"]
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("kind", KINDS)
async def test_consecutive_failures_end_the_process(kernel: Kernel, kind: str) -> None:
    bad = load(f"{kind}_conversation.json")[1]  # a reply whose arguments are not JSON
    with replay_server([bad] * 5) as api:
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url, max_failures=3)))
        pid = kernel.spawn("notes", caps=CAPS, args=GOAL)
        status = await kernel.wait(pid, timeout=30)
    assert status["exit_code"] == 1
    assert status["result"]["error"] == "LIMIT_EXCEEDED"
    assert len(api.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_an_api_failure_ends_the_process_not_the_broker(kernel: Kernel, kind: str
                                                              ) -> None:
    with replay_server([]) as api:  # every request answers 500
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        pid = kernel.spawn("notes", caps=CAPS, args=GOAL)
        status = await kernel.wait(pid, timeout=30)
    assert status["exit_code"] == 1
    assert status["result"]["error"] == "PLANNER"
    assert kernel.live == []


async def test_no_api_key_is_a_typed_error(kernel: Kernel, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.delenv("LIBOS_TEST_KEY")
    await kernel.register_image(AgentImage(
        "notes", tools=TOOLS, needs=CAPS, planner=settings("openai", "http://127.0.0.1:9")))
    status = await kernel.wait(kernel.spawn("notes", caps=CAPS, args=GOAL), timeout=30)
    assert status["exit_code"] == 1
    assert status["result"]["error"] == "INVALID_ARGUMENT"
    assert "LIBOS_TEST_KEY" in status["result"]["message"]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_conversation_survives_a_broker_crash(db_path: Path, kind: str) -> None:
    """The broker stops while a model request is in flight; the next broker rebuilds the
    planner from the image and its checkpointed conversation, and asks the model exactly
    the same thing again."""
    with replay_server(load(f"{kind}_conversation.json")) as api:
        api.hold = 1  # the second request never gets an answer
        async with Kernel.open(db_path) as kernel:
            await kernel.register_image(AgentImage(
                "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
            pid = kernel.spawn("notes", caps=CAPS, args=GOAL)
            while len(api.requests) < 2:
                await trio.sleep(0.01)
        api.release()
        async with Kernel.open(db_path) as kernel:
            status = await kernel.wait(pid, timeout=30)
    assert (status["exit_code"], status["result"]) == (0, "Done: /notes/a.txt says hello.")
    assert len(api.requests) == 7
    assert api.requests[2] == api.requests[1]
    assert tool_results(kind, api.requests[2])[call_id(kind, "rd")] == "hello"


def test_unknown_planner_kind() -> None:
    from broker import InvalidArgument

    with pytest.raises(InvalidArgument):
        planner_from_settings({"kind": "oracle"}, image="x", tools=list)


MALFORMED = {
    "openai": [{"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
                "choices": []},
               {"id": "chatcmpl-y", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": None, "arguments": "{}"}}]}}]}],
    "anthropic": [{"id": "msg_x", "type": "message", "role": "assistant", "model": "m",
                   "content": None, "stop_reason": "end_turn"},
                  {"id": "msg_y", "type": "message", "role": "assistant", "model": "m",
                   "content": [{"type": "tool_use", "input": {}}], "stop_reason": "tool_use"}],
}


@pytest.mark.parametrize("kind", KINDS)
async def test_malformed_replies_are_asked_again_within_the_bound(kernel: Kernel,
                                                                   kind: str) -> None:
    final = load(f"{kind}_conversation.json")[-1]
    with replay_server([*MALFORMED[kind], final]) as api:
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        status = await kernel.wait(kernel.spawn("notes", caps=CAPS, args=GOAL), timeout=30)
    assert (status["exit_code"], status["result"]) == (0, "Done: /notes/a.txt says hello.")
    assert len(api.requests) == 3
    assert api.requests[2] == api.requests[0]  # nothing of the bad replies was kept

    with replay_server(MALFORMED[kind] * 3) as api:
        await kernel.register_image(AgentImage(
            "bad", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url, max_failures=4)))
        status = await kernel.wait(kernel.spawn("bad", caps=CAPS, args=GOAL), timeout=30)
    assert status["exit_code"] == 1
    assert status["result"]["error"] == "LIMIT_EXCEEDED"
    assert len(api.requests) == 4


@pytest.mark.parametrize("kind", KINDS)
async def test_a_fork_carries_the_conversation_on(kernel: Kernel, kind: str) -> None:
    recorded = load(f"{kind}_conversation.json")
    with replay_server([*recorded, recorded[-1]]) as api:
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        pid = kernel.spawn("notes", caps=CAPS, args=GOAL)
        assert (await kernel.wait(pid, timeout=30))["exit_code"] == 0
        child = kernel.fork(pid)
        status = await kernel.wait(child, timeout=30)
    assert (status["exit_code"], status["result"]) == (0, "Done: /notes/a.txt says hello.")
    assert len(api.requests) == 7
    assert api.requests[6] == api.requests[5]  # the child asks what the parent last asked


@pytest.mark.parametrize("kind", KINDS)
async def test_a_step_cut_off_after_its_outcome_keeps_the_conversation(db_path: Path,
                                                                      kind: str) -> None:
    """The broker stops dead after the first tool call's outcome is recorded, before the
    checkpoint after it: the next broker hands that result to the planner, rebuilt with its
    conversation (the calls of the reply still to run included), and nothing is asked or
    run twice."""
    undo = crash_after("append_audit", outcome_of("tool.call"))

    async def start(kernel: Kernel) -> None:
        await kernel.register_image(AgentImage(
            "notes", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        kernel.spawn("notes", caps=CAPS, args=GOAL)

    with replay_server(load(f"{kind}_conversation.json")) as api:
        try:
            await crashing(db_path, start)
        finally:
            undo()
        async with Kernel.open(db_path) as kernel:
            status = await kernel.wait(1, timeout=30)
            made = [r for r in kernel.audit(1) if r["syscall"] == "fs.mkdir"
                    and r["phase"] == "intent"]
    assert (status["exit_code"], status["result"]) == (0, "Done: /notes/a.txt says hello.")
    assert len(api.requests) == 6
    assert tool_results(kind, api.requests[1]) == {
        call_id(kind, "mk"): None, call_id(kind, "wr"): 5, call_id(kind, "rd"): "hello"}
    assert len(made) == 1
