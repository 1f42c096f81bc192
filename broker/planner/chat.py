"""A model planner: a chat model with tool calling drives a process.

The conversation is kept in a provider-neutral form (a list of plain JSON turns), so it can be
snapshotted into a checkpoint and restored after a crash; a thin backend per API (OpenAI chat
completions, Anthropic messages) renders it into a request and parses a reply back.

Each step: the tool table (`tools()`, the process's current table, JIT tools included) is
offered as JSON-Schema tools; a tool call becomes one `CallTool`, which the broker checks,
audits and runs; the observation goes back to the model as that call's tool result (a typed
error as `{"error": CODE, "message": ...}`). Several tool calls in one reply are queued and
taken one per step, each observed. A reply without a tool call ends the process with its text.

Bad model output never crashes the process: arguments that are not a JSON object come back
to the model as an `INVALID_ARGUMENT` tool result; unknown tools and arguments that fail the
schema go to the broker, which answers `NOT_FOUND` / `INVALID_ARGUMENT` (audited). After
`max_failures` failed tool results in a row the process exits 1 with `LIMIT_EXCEEDED`.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.errors import InvalidArgument
from broker.planner.base import Action, CallTool, Exit, Observation

MAX_RESULT_CHARS = 16_000
DEFAULT_MAX_FAILURES = 5
DEFAULT_SYSTEM = (
    "You are an agent running as a process in libos, a capability-controlled runtime. "
    "Act only by calling the tools offered. Every effect is checked against your "
    "capabilities and audited; a refused call comes back as a tool result "
    '{"error": CODE, "message": ...}. When the goal is reached (or cannot be), answer with '
    "a short final message and no tool call."
)

TOOL_GUIDE = (
    "\n\nYou can add tools with register_tool {name, lang, source, schema, description}, "
    "then call them by name. TypeScript (lang \"ts\"): `export default async function "
    "run(args, libos) { ... return value; }`; the tool has no other access to the world "
    "than `libos` (e.g. `await libos.fs.read(path)`, `libos.fs.write(path, text)`, "
    "`libos.fs.list(path)`, `libos.obj.put(name, type, value)`, `libos.obj.get(name)`, "
    "`libos.clock.now()`, or `libos.syscall(name, args)`), under your capabilities. "
    "Python (lang \"python\", where available): `def run(args, libos): ... return value` "
    "with the same `libos` API (e.g. `libos.fs.read_text(path)`). "
    "WebAssembly: lang \"wat\" (text) or \"wasm\", following the libos guest ABI. Source "
    "that does not compile comes back as an INVALID_ARGUMENT error."
)
DEFAULT_MAX_CONTEXT = 200_000  # characters of tool results kept in the conversation
ELIDED = '{"elided": "an older tool result, cut to keep the conversation short"}'
KEEP_RECENT = 8  # the last turns are never elided

ToolTable = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One tool call as the model wrote it: `arguments` is the raw value (a JSON string for
    chat completions, an object for Anthropic)."""

    id: str
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    calls: list[ToolCallRequest] = field(default_factory=list)


class MalformedReply(InvalidArgument):
    """The model's reply has no usable turn (no choices, no content, odd tool calls)."""


def tool_calls_of(pairs: Any) -> list[ToolCallRequest]:
    """Tool calls as (id, name, arguments) triples, checked: ids and names are text."""
    calls = []
    for id_, name, arguments in pairs:
        if not isinstance(id_, str) or not id_ or not isinstance(name, str):
            raise MalformedReply("a tool call without an id or a name")
        calls.append(ToolCallRequest(id_, name, arguments))
    return calls


class Backend(Protocol):
    """One model API: render the neutral conversation, send it, parse the reply."""

    async def complete(self, system: str, turns: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> Reply: ...


def to_json_text(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """A tool result as text for a model (bytes as {"$bytes": base64}), cut to `limit`."""

    def encode(v: Any) -> Any:
        if isinstance(v, bytes | bytearray | memoryview):
            return {"$bytes": base64.b64encode(bytes(v)).decode()}
        if isinstance(v, dict):
            return {str(k): encode(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [encode(x) for x in v]
        return v

    text = json.dumps(encode(value), ensure_ascii=False, default=repr)
    if len(text) > limit:
        text = text[: limit - 40] + f"... [cut: {len(text)} characters in all]"
    return text


def parse_arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as an object, or `InvalidArgument`."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise InvalidArgument(f"tool arguments are not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("tool arguments must be a JSON object")
    return raw


def api_key(settings: dict[str, Any], default_env: str) -> str:
    env = settings.get("api_key_env", default_env)
    key = os.environ.get(env) if isinstance(env, str) else None
    if not key:
        raise InvalidArgument(f"no API key: set the environment variable {env}")
    return key


class SdkBackend:
    """What the two official SDKs share: settings, and a client made per request (their
    close-on-collection path needs asyncio, so under trio a client is closed explicitly)."""

    key_env: str = ""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def sdk_client_class(self) -> Any:
        raise NotImplementedError

    def client(self) -> Any:
        s = self.settings
        return self.sdk_client_class()(
            api_key=api_key(s, self.key_env), base_url=s.get("base_url"),
            timeout=float(s.get("timeout", 120)), max_retries=int(s.get("max_retries", 2)))


class ChatPlanner:
    """Drives a process with a chat model through `backend`. `goal` is the first user
    message; `tools()` gives the process's tool table each step."""

    def __init__(self, backend: Backend, tools: ToolTable, *, goal: str,
                 system: str | None = None, max_failures: int = DEFAULT_MAX_FAILURES,
                 max_context: int = DEFAULT_MAX_CONTEXT) -> None:
        self.backend = backend
        self.tools = tools
        self.system = system or DEFAULT_SYSTEM
        self.max_failures = max_failures
        self.max_context = max_context
        self.turns: list[dict[str, Any]] = [{"role": "user", "text": goal}]
        self.queue: list[dict[str, Any]] = []  # tool calls of the last reply, not yet taken
        self.awaiting: str | None = None  # the call whose observation comes next
        self.seen = 0  # observations of `history` already turned into tool results
        self.failures = 0  # failed tool results in a row

    # -- checkpoints -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"turns": self.turns, "queue": self.queue, "awaiting": self.awaiting,
                "seen": self.seen, "failures": self.failures}

    def restore(self, state: dict[str, Any]) -> None:
        self.turns = list(state["turns"])
        self.queue = list(state["queue"])
        self.awaiting = state["awaiting"]
        self.seen = int(state["seen"])
        self.failures = int(state["failures"])

    # -- the planner -------------------------------------------------------------------------

    async def next_action(self, history: list[Observation]) -> Action:
        for obs in history[self.seen:]:
            if self.awaiting is not None:
                self._result(self.awaiting, obs.result if obs.ok else
                             {"error": obs.error["code"], "message": obs.error["message"]},
                             failed=not obs.ok)  # type: ignore[index]
                self.awaiting = None
        self.seen = len(history)
        while True:
            if self.failures >= self.max_failures:
                self._skip_queue()
                return Exit(1, {"error": "LIMIT_EXCEEDED",
                                "message": f"{self.failures} failed tool calls in a row"})
            if self.queue:
                call = self.queue.pop(0)
                try:
                    args = parse_arguments(call["arguments"])
                except InvalidArgument as exc:
                    self._result(call["id"], {"error": exc.code, "message": exc.message},
                                 failed=True)
                    continue
                self.awaiting = call["id"]
                return CallTool(call["name"], args)
            self._elide()
            specs = self._tool_specs()
            system = self.system + (TOOL_GUIDE if any(
                t["name"] == "register_tool" for t in specs) else "")
            try:
                reply = await self.backend.complete(system, self.turns, specs)
            except MalformedReply:
                # A reply that is not a chat turn: ask again (bounded like a failed call).
                self.failures += 1
                continue
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                     for c in reply.calls]
            self.turns.append({"role": "assistant", "text": reply.text, "calls": calls})
            if not calls:
                return Exit(0, reply.text)
            self.queue = list(calls)

    def _tool_specs(self) -> list[dict[str, Any]]:
        return [{"name": t["name"], "description": t.get("description") or t["name"],
                 "schema": t.get("schema") or {"type": "object"}} for t in self.tools()]

    def _result(self, call_id: str, value: Any, *, failed: bool) -> None:
        self.failures = self.failures + 1 if failed else 0
        self.turns.append({"role": "tool", "id": call_id, "content": to_json_text(value),
                           "error": failed})

    def _elide(self) -> None:
        """Keep the conversation (and so each checkpoint) bounded: past `max_context`
        characters of tool results, the oldest ones (never the last turns) are elided."""
        total = sum(len(t["content"]) for t in self.turns if t["role"] == "tool")
        for turn in self.turns[:-KEEP_RECENT]:
            if total <= self.max_context:
                return
            if turn["role"] == "tool" and turn["content"] != ELIDED:
                total -= len(turn["content"]) - len(ELIDED)
                turn["content"] = ELIDED

    def _skip_queue(self) -> None:
        # Every call of a reply needs a result before the conversation can go on.
        for call in self.queue:
            self.turns.append({"role": "tool", "id": call["id"], "error": True,
                               "content": to_json_text({"error": "CANCELLED",
                                                        "message": "not run"})})
        self.queue = []


def group_tool_results(turns: list[dict[str, Any]]) -> list[list[dict[str, Any]] | dict[str, Any]]:
    """Turns, with each run of consecutive tool results gathered into one list (Anthropic
    wants all results of one reply in one user message)."""
    out: list[list[dict[str, Any]] | dict[str, Any]] = []
    for turn in turns:
        if turn["role"] == "tool" and out and isinstance(out[-1], list):
            out[-1].append(turn)
        elif turn["role"] == "tool":
            out.append([turn])
        else:
            out.append(turn)
    return out
