"""A model writes tools at run time through `register_tool` (TypeScript in Deno, WAT in
Wasmtime) and calls them; tool source that does not compile comes back as a typed error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from sandboxes.available import open_sandboxes
from sandboxes.pyodide import pyodide_available
from tests.broker.planner.replay import replay_server
from tests.broker.planner.test_chat import KINDS, settings, tool_results

ROOT = Path(__file__).resolve().parents[3]
WORDCOUNT = (ROOT / "wasm-tools" / "examples" / "wordcount.wat").read_text(encoding="utf-8")
SHOUT = ("export default async function run(args: {text: string}) "
         "{ return args.text.toUpperCase() + '!'; }")
BROKEN = "export default async function run( { return 1 }"
LINES = ("def run(args, libos):\n"
         "    return [line.upper() for line in libos.fs.read_text(args['path']).splitlines()]\n")
BROKEN_PY = "def run(args, libos:\n    return 1\n"
TEXT_ARG = {"type": "object", "properties": {"text": {"type": "string"}},
            "required": ["text"]}
PATH_ARG = {"type": "object", "properties": {"path": {"type": "string"}},
            "required": ["path"]}
CAPS = ["fs:/notes/**:read,write", "tool:*:register,call"]
TOOLS = ("make_dir", "write_file", "register_tool")


def reply(kind: str, n: int, calls: list[tuple[str, str, dict[str, Any]]],
          text: str = "") -> dict[str, Any]:
    """A chat-completions or messages response with these tool calls (id, name, args)."""
    if kind == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [
                {"id": id_, "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for id_, name, args in calls]
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1764000000 + n,
                "model": "m", "choices": [{"index": 0, "message": message,
                                           "finish_reason": "tool_calls" if calls else "stop"}]}
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": id_, "name": name, "input": args}
                for id_, name, args in calls]
    return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": "m",
            "content": content, "stop_reason": "tool_use" if calls else "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}


@pytest.fixture
async def sandboxed(tmp_path: Path) -> AsyncIterator[Kernel]:
    async with open_sandboxes(tmp_path / "work", spares=0) as sandboxes, Kernel.open(
            tmp_path / "libos.db", sandboxes=sandboxes) as kernel:
        yield kernel


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_model_registers_and_calls_its_own_tools(sandboxed: Kernel, kind: str) -> None:
    kernel = sandboxed
    responses = [
        reply(kind, 1, [
            ("c1", "make_dir", {"path": "/notes"}),
            ("c2", "write_file", {"path": "/notes/a.txt", "data": "one two three\n"}),
            ("c3", "register_tool", {"name": "shout", "lang": "ts", "source": SHOUT,
                                     "schema": TEXT_ARG, "description": "Shout a text."}),
            ("c4", "register_tool", {"name": "wordcount", "lang": "wat",
                                     "source": WORDCOUNT, "schema": PATH_ARG}),
            ("c5", "register_tool", {"name": "broken", "lang": "ts", "source": BROKEN}),
            ("c6", "register_tool", {"name": "snake", "lang": "cobol", "source": "x"}),
        ], "Writing my tools."),
        reply(kind, 2, [("c7", "shout", {"text": "hi"}),
                        ("c8", "wordcount", {"path": "/notes/a.txt"}),
                        ("c9", "wordcount", {"path": "/etc/passwd"}),
                        ("c10", "broken", {})]),
        reply(kind, 3, [], "HI! and 3 words."),
    ]
    with replay_server(responses) as api:
        await kernel.register_image(AgentImage(
            "maker", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        pid = kernel.spawn("maker", caps=CAPS, args="Make tools and use them.")
        status = await kernel.wait(pid, timeout=60)
    assert (status["exit_code"], status["result"]) == (0, "HI! and 3 words."), status
    first = tool_results(kind, api.requests[1])
    assert first["c3"]["name"] == "shout" and first["c3"]["lang"] == "ts"
    assert first["c4"]["name"] == "wordcount" and first["c4"]["lang"] == "wat"
    assert first["c5"]["error"] == "INVALID_ARGUMENT"
    assert "SyntaxError" in first["c5"]["message"]
    assert first["c6"]["error"] == "INVALID_ARGUMENT"
    # The next request offers the new tools, with their schemas.
    second = api.requests[1]
    names = ({t["function"]["name"]: t["function"]["parameters"] for t in second["tools"]}
             if kind == "openai" else {t["name"]: t["input_schema"] for t in second["tools"]})
    assert names["shout"] == TEXT_ARG and names["wordcount"] == PATH_ARG
    assert "broken" not in names
    results = tool_results(kind, api.requests[2])
    assert results["c7"] == "HI!"
    assert results["c8"] == {"words": 3, "lines": 1, "bytes": 14}
    assert results["c9"]["error"] == "NOT_CAPABLE"
    assert results["c10"]["error"] == "NOT_FOUND"


@pytest.mark.skipif(not pyodide_available(), reason="Pyodide is not installed (libos setup)")
@pytest.mark.parametrize("kind", KINDS)
async def test_a_model_writes_a_python_tool(sandboxed: Kernel, kind: str) -> None:
    kernel = sandboxed
    responses = [
        reply(kind, 1, [
            ("p1", "make_dir", {"path": "/notes"}),
            ("p2", "write_file", {"path": "/notes/l.txt", "data": "ab\ncd\n"}),
            ("p3", "register_tool", {"name": "upper_lines", "lang": "python",
                                     "source": LINES, "schema": PATH_ARG}),
            ("p4", "register_tool", {"name": "broken_py", "lang": "python",
                                     "source": BROKEN_PY}),
        ]),
        reply(kind, 2, [("p5", "upper_lines", {"path": "/notes/l.txt"}),
                        ("p6", "upper_lines", {"path": "/etc/passwd"})]),
        reply(kind, 3, [], "AB CD"),
    ]
    with replay_server(responses) as api:
        await kernel.register_image(AgentImage(
            "py", tools=TOOLS, needs=CAPS, planner=settings(kind, api.url)))
        status = await kernel.wait(kernel.spawn("py", caps=CAPS, args="Python."), timeout=120)
    assert (status["exit_code"], status["result"]) == (0, "AB CD"), status
    first = tool_results(kind, api.requests[1])
    assert first["p3"].get("lang") == "python", first
    assert first["p4"]["error"] == "INVALID_ARGUMENT" and "SyntaxError" in first["p4"]["message"]
    results = tool_results(kind, api.requests[2])
    assert results["p5"] == ["AB", "CD"]
    assert results["p6"]["error"] == "NOT_CAPABLE"
