"""A model planner: a chat model with tool calling drives a process.

The conversation is kept in a provider-neutral form (a list of plain JSON turns), so it can be
snapshotted into a checkpoint and restored after a crash; a thin backend per API (OpenAI chat
completions, Anthropic messages) renders it into a request and parses a reply back.

Each step: the tool table (`tools()`, the process's current table, JIT tools included) is
offered as JSON-Schema tools; a tool call becomes one `CallTool`, which the broker checks,
audits and runs; the observation goes back to the model as that call's tool result (a typed
error as `{"error": CODE, "message": ...}`). Several tool calls in one reply are queued and
taken one per step, each observed. A reply without a tool call ends the process with its text.

Bad model output never crashes the process: arguments that are not a JSON object, or are
too big, too deep or badly encoded (see `bounds`), come back to the model as an
`INVALID_ARGUMENT` tool result, a reply with too many calls as `LIMIT_EXCEEDED` results;
unknown tools and arguments that fail the schema go to the broker, which answers
`NOT_FOUND` / `INVALID_ARGUMENT` (audited). After `max_failures` failures in a row the
process exits 1 with `LIMIT_EXCEEDED`.

The conversation stays bounded: tool results, the model's text and its call arguments all
count against `max_context` characters, and the oldest are elided past it. It is
checkpointed one row per turn (`journal()` gives the turns added or changed since the last
checkpoint), never rewritten whole; the calls of a reply not yet run are an index into it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from broker.errors import InvalidArgument, LimitExceeded
from broker.planner.base import Action, CallTool, Exit, Observation
from broker.planner.bounds import (
    DEFAULT_MAX_ARGUMENT_CHARS,
    DEFAULT_MAX_CALLS,
    MAX_NAME_CHARS,
    arguments_size,
    clean_text,
    cut,
    parse_arguments,
)
from broker.planner.tls import shared_tls

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
    "that does not compile comes back as an INVALID_ARGUMENT error. A name you have already "
    "is a CONFLICT unless you add \"replace\": true."
)
DEFAULT_MAX_CONTEXT = 200_000  # characters of results, text and arguments kept
ELIDED = '{"elided": "an older tool result, cut to keep the conversation short"}'
ELIDED_TEXT = "[elided: an older reply, cut to keep the conversation short]"
ELIDED_ARGS = '{"elided": "the arguments of an older call"}'
KEEP_RECENT = 8  # the last turns are never elided
# Each turn counts at least this much against max_context, so that once old exchanges are
# elided they are dropped whole, and the number of turns is bounded too.
MIN_TURN_CHARS = 512

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


@contextlib.asynccontextmanager
async def reply_body() -> AsyncIterator[None]:
    """Around an SDK's request: a reply whose body is not JSON is a malformed reply (asked
    again, within the failure budget), not the end of the process."""
    try:
        yield
    except json.JSONDecodeError as exc:
        raise MalformedReply(f"the reply is not JSON: {exc}") from None


def tool_calls_of(pairs: Any) -> list[ToolCallRequest]:
    """Tool calls as (id, name, arguments) triples, checked: ids and names are text."""
    calls = []
    for id_, name, arguments in pairs:
        if not isinstance(id_, str) or not id_ or not isinstance(name, str):
            raise MalformedReply("a tool call without an id or a name")
        if len(id_) > MAX_NAME_CHARS or len(name) > MAX_NAME_CHARS:
            raise MalformedReply(f"a tool call id or name longer than {MAX_NAME_CHARS}")
        calls.append(ToolCallRequest(clean_text(id_), clean_text(name), arguments))
    return calls


class Backend(Protocol):
    """One model API: render the neutral conversation, send it, parse the reply."""

    async def complete(self, system: str, turns: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> Reply: ...


def to_json_text(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """A tool result as text for a model (bytes as {"$bytes": base64}), cut to `limit`.
    Only about `limit` characters of strings, bytes and items are encoded (no more could be
    shown): encoding an 8 MiB read whole took the broker's thread ~40 ms for 16,000
    characters. The cut says how long the text would have been, at least."""
    room, dropped = limit + 1, 0  # characters still worth encoding; those left out

    def take(v: Any) -> Any:
        nonlocal room, dropped
        keep = v[:max(room, 0)]
        room -= len(keep) + 1
        dropped += len(v) - len(keep)
        return keep

    def items(seq: Any) -> Iterator[Any]:
        nonlocal room, dropped
        for n, item in enumerate(seq):
            if room <= 0:
                dropped += len(seq) - n
                return
            room -= 1
            yield item

    def encode(v: Any) -> Any:
        if isinstance(v, bytes | bytearray | memoryview):
            return {"$bytes": base64.b64encode(bytes(take(v))).decode()}
        if isinstance(v, str):
            return take(v)
        if isinstance(v, dict):
            return {take(str(k)): encode(x) for k, x in items(v.items())}
        if isinstance(v, list | tuple):
            return [encode(x) for x in items(v)]
        return v

    text = json.dumps(encode(value), ensure_ascii=False, default=repr)
    return cut(text, limit, dropped)


def api_key(settings: dict[str, Any], default_env: str) -> str:
    env = settings.get("api_key_env", default_env)
    key = os.environ.get(env) if isinstance(env, str) else None
    if not key:
        raise InvalidArgument(f"no API key: set the environment variable {env}")
    return key


class SdkBackend:
    """What the two official SDKs share: settings, and a client made per request (their
    close-on-collection path needs asyncio, so under trio a client is closed explicitly),
    over the TLS settings made once (`tls.shared_tls`), its SDK imported off the broker's
    thread."""

    key_env: str = ""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def sdk_client_class(self) -> Any:
        raise NotImplementedError

    def http_client_class(self) -> Any:
        """The SDK's own HTTP client class (its default limits and redirects)."""
        raise NotImplementedError

    def _parts(self) -> tuple[Any, Any, Any]:
        """The SDK's client classes and the shared TLS settings. The first time, this imports
        the SDK (seconds of CPU) and loads the CA bundle: in a worker thread, between whose
        turns the broker's thread goes on."""
        return self.sdk_client_class(), self.http_client_class(), shared_tls()

    async def client(self) -> Any:
        s = self.settings
        sdk, http, tls = await trio.to_thread.run_sync(self._parts)
        return sdk(api_key=api_key(s, self.key_env), base_url=s.get("base_url"),
                   timeout=float(s.get("timeout", 120)), max_retries=int(s.get("max_retries", 2)),
                   http_client=http(verify=tls))


class ChatPlanner:
    """Drives a process with a chat model through `backend`. `goal` is the first user
    message; `tools()` gives the process's tool table each step."""

    def __init__(self, backend: Backend, tools: ToolTable, *, goal: str,
                 system: str | None = None, max_failures: int = DEFAULT_MAX_FAILURES,
                 max_context: int = DEFAULT_MAX_CONTEXT, max_calls: int = DEFAULT_MAX_CALLS,
                 max_argument_chars: int = DEFAULT_MAX_ARGUMENT_CHARS) -> None:
        self.backend = backend
        self.tools = tools
        self.system = system or DEFAULT_SYSTEM
        self.max_failures = max_failures
        self.max_context = max_context
        self.max_calls = max_calls
        self.max_argument_chars = max_argument_chars
        self.turns: list[dict[str, Any]] = [{"role": "user", "text": clean_text(goal)}]
        self.reply: int | None = None  # the assistant turn whose calls are being taken
        self.next_call = 0  # its next call not yet taken
        self.awaiting: str | None = None  # the call whose observation comes next
        self.seen = 0  # observations of `history` already turned into tool results
        self.failures = 0  # failed tool results (or unusable replies) in a row
        # Turns are numbered from the goal (0) on; `first` is the number of `turns[1]` (the
        # turns between the goal and it were dropped).
        self.first = 1
        self._dirty: set[int] = {0}  # turn numbers added, changed or dropped since `journal()`

    @property
    def queue(self) -> list[dict[str, Any]]:
        """The calls of the last reply not yet taken."""
        if self.reply is None:
            return []
        return self.turns[self.reply]["calls"][self.next_call:]

    # -- checkpoints -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The planner's state without its turns (those are `journal()`ed): a few numbers."""
        return {"turns": self._number(len(self.turns)), "first": self.first,
                "reply": self.reply, "next_call": self.next_call,
                "awaiting": self.awaiting, "seen": self.seen, "failures": self.failures}

    def journal(self) -> dict[int, dict[str, Any] | None]:
        """The turns added, changed (a turn: its new content) or dropped (None) since the
        last call, by number: what a checkpoint writes, one row per turn."""
        rows = {n: self.turns[n - self.first + 1] if n == 0 or n >= self.first else None
                for n in sorted(self._dirty)}
        self._dirty.clear()
        return rows

    def _number(self, position: int) -> int:
        """The number of the turn at `position` in `turns` (or of the next one)."""
        return 0 if position == 0 else self.first + position - 1

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from `snapshot()` with "turns" the list of turns (as the kernel assembles
        it from the rows), or from an older whole-conversation checkpoint."""
        self.turns = [dict(t) for t in state["turns"]]
        self.first = int(state.get("first", 1))
        self.reply, self.next_call = state.get("reply"), int(state.get("next_call", 0))
        if "queue" in state:  # the queue as a list of calls: an index into the last reply
            self.reply = max((i for i, t in enumerate(self.turns) if t["role"] == "assistant"),
                             default=None)
            if self.reply is not None:
                self.next_call = len(self.turns[self.reply]["calls"]) - len(state["queue"])
        self.awaiting = state["awaiting"]
        self.seen = int(state["seen"])
        self.failures = int(state["failures"])
        # Written again once, with the next save.
        self._dirty = {self._number(i) for i in range(len(self.turns))}

    # -- the planner -------------------------------------------------------------------------

    async def next_action(self, history: Sequence[Observation]) -> Action:
        for obs in history[self.seen:]:
            if self.awaiting is not None:
                failed = not obs.ok
                self._result(self.awaiting, obs.result if obs.ok else
                             {"error": obs.error["code"], "message": obs.error["message"]},
                             failed=failed)  # type: ignore[index]
                self.failures = self.failures + 1 if failed else 0
                self.awaiting = None
        self.seen = len(history)
        while True:
            if self.failures >= self.max_failures:
                self._skip_queue()
                return Exit(1, {"error": "LIMIT_EXCEEDED",
                                "message": f"{self.failures} failed tool calls in a row"})
            queue = self.queue
            if queue:
                call = queue[0]
                self.next_call += 1
                try:
                    if "refused" in call:
                        raise InvalidArgument(call["refused"])
                    args = parse_arguments(call["arguments"], self.max_argument_chars)
                except InvalidArgument as exc:
                    self._result(call["id"], {"error": exc.code, "message": exc.message},
                                 failed=True)
                    self.failures += 1
                    continue
                self.awaiting = call["id"]
                return CallTool(call["name"], args)
            self.reply, self.next_call = None, 0
            self._elide()
            specs = self._tool_specs()
            system = self.system + (TOOL_GUIDE if any(
                t["name"] == "register_tool" for t in specs) else "")
            try:
                reply = await self.backend.complete(system, self.turns, specs)
            except (MalformedReply, RecursionError):
                # A reply that is not a chat turn (or nests past what can be parsed): ask
                # again, bounded like a failed call.
                self.failures += 1
                continue
            over = self._take_reply(reply)
            if not self.turns[-1]["calls"]:
                return Exit(0, clean_text(reply.text))
            if over is not None:
                # None of its calls runs: each is answered with the error, one failure.
                for call in self.turns[-1]["calls"]:
                    self._result(call["id"], {"error": over.code, "message": over.message},
                                 failed=True)
                self.failures += 1
                continue
            self.reply, self.next_call = len(self.turns) - 1, 0

    def _take_reply(self, reply: Reply) -> LimitExceeded | None:
        """Add the model's reply as a turn, bounded: its text cut like a tool result, each
        call's arguments vetted (refused ones kept as an empty object), at most
        `max_calls` calls. Returns the error for a reply too big to run at all."""
        calls, total = [], 0
        for c in reply.calls[: self.max_calls]:
            call: dict[str, Any] = {"id": c.id, "name": c.name, "arguments": c.arguments}
            try:
                parse_arguments(c.arguments, self.max_argument_chars)
                total += arguments_size(c.arguments)
            except InvalidArgument as exc:
                call["arguments"] = "{}" if isinstance(c.arguments, str) else {}
                call["refused"] = exc.message
            calls.append(call)
        over = None
        if len(reply.calls) > self.max_calls:
            over = LimitExceeded(f"a reply may make at most {self.max_calls} tool calls; this "
                                 f"one made {len(reply.calls)}, so none was run")
        elif total > self.max_context:
            over = LimitExceeded(f"the arguments of this reply's calls come to {total} "
                                 f"characters, more than the {self.max_context} the "
                                 "conversation keeps, so none was run")
        if over is not None:
            for call in calls:
                call["arguments"] = "{}" if isinstance(call["arguments"], str) else {}
        self._append({"role": "assistant", "calls": calls,
                      "text": cut(clean_text(reply.text), MAX_RESULT_CHARS)})
        return over

    def _tool_specs(self) -> list[dict[str, Any]]:
        return [{"name": t["name"], "description": t.get("description") or t["name"],
                 "schema": t.get("schema") or {"type": "object"}} for t in self.tools()]

    def _append(self, turn: dict[str, Any]) -> None:
        self.turns.append(turn)
        self._dirty.add(self._number(len(self.turns) - 1))

    def _result(self, call_id: str, value: Any, *, failed: bool) -> None:
        self._append({"role": "tool", "id": call_id, "content": to_json_text(value),
                      "error": failed})

    def _elide(self) -> None:
        """Keep the conversation (and what is stored of it) bounded: past `max_context`
        characters of tool results, model text and call arguments, the oldest are elided
        (never the goal, never the last turns), and then the oldest exchanges (a reply and
        its results) dropped whole."""
        total = sum(_size(t) for t in self.turns[1:])
        for index in range(1, len(self.turns) - KEEP_RECENT):
            if total <= self.max_context:
                return
            turn = self.turns[index]
            before = _size(turn)
            _elide_turn(turn)
            if _size(turn) != before:
                total -= before - _size(turn)
                self._dirty.add(self._number(index))
        while total > self.max_context and self.turns[1:2] and \
                self.turns[1]["role"] == "assistant":
            end = 2
            while end < len(self.turns) and self.turns[end]["role"] == "tool":
                end += 1
            if end > len(self.turns) - KEEP_RECENT:
                return
            total -= sum(_size(t) for t in self.turns[1:end])
            self._dirty.update(self._number(i) for i in range(1, end))
            del self.turns[1:end]
            self.first += end - 1

    def _skip_queue(self) -> None:
        # Every call of a reply needs a result before the conversation can go on.
        for call in self.queue:
            self._result(call["id"], {"error": "CANCELLED", "message": "not run"}, failed=True)
        self.reply, self.next_call = None, 0


def _size(turn: dict[str, Any]) -> int:
    """The characters a turn counts for in the conversation."""
    if turn["role"] == "tool":
        size = len(turn["content"])
    elif turn["role"] == "assistant":
        size = len(turn["text"]) + sum(arguments_size(c["arguments"]) for c in turn["calls"])
    else:
        size = len(turn["text"])
    return max(size, MIN_TURN_CHARS)


def _elide_turn(turn: dict[str, Any]) -> None:
    if turn["role"] == "tool" and len(turn["content"]) > len(ELIDED):
        turn["content"] = ELIDED
    elif turn["role"] == "assistant":
        if len(turn["text"]) > len(ELIDED_TEXT):
            turn["text"] = ELIDED_TEXT
        for call in turn["calls"]:
            if arguments_size(call["arguments"]) > len(ELIDED_ARGS):
                call["arguments"] = (ELIDED_ARGS if isinstance(call["arguments"], str)
                                     else json.loads(ELIDED_ARGS))


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
