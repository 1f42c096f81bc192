"""The OpenAI-compatible chat-completions backend (official `openai` SDK, extra `llm`).

Any server that speaks `/v1/chat/completions` with tool calls works: set `base_url` in the
image's planner settings (else the SDK's own `OPENAI_BASE_URL`)."""

from __future__ import annotations

import json
from typing import Any

from broker.planner.chat import (
    MalformedReply,
    Reply,
    SdkBackend,
    group_tool_results,
    reply_body,
    tool_calls_of,
)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def render(system: str, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in group_tool_results(turns):
        if isinstance(turn, list):
            messages += [{"role": "tool", "tool_call_id": t["id"], "content": t["content"]}
                         for t in turn]
        elif turn["role"] == "user":
            messages.append({"role": "user", "content": turn["text"]})
        else:
            message: dict[str, Any] = {"role": "assistant", "content": turn["text"] or None}
            if turn["calls"]:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": c["arguments"]
                                  if isinstance(c["arguments"], str)
                                  else json.dumps(c["arguments"])}}
                    for c in turn["calls"]]
            messages.append(message)
    return messages


class OpenAIBackend(SdkBackend):
    key_env = DEFAULT_KEY_ENV

    def sdk_client_class(self) -> Any:
        from openai import AsyncOpenAI  # the `llm` extra

        return AsyncOpenAI

    def http_client_class(self) -> Any:
        from openai import DefaultAsyncHttpxClient

        return DefaultAsyncHttpxClient

    async def complete(self, system: str, turns: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> Reply:
        s = self.settings
        extra: dict[str, Any] = {}
        for key in ("max_tokens", "max_completion_tokens", "temperature"):
            if s.get(key) is not None:
                extra[key] = s[key]
        async with await self.client() as client, reply_body():
            response = await client.chat.completions.create(
                model=s.get("model", "gpt-4.1-mini"), messages=render(system, turns),
                tools=[{"type": "function", "function": {
                    "name": t["name"], "description": t["description"],
                    "parameters": t["schema"]}} for t in tools] or None, **extra)
        # The SDK keeps what does not fit its types as it came: every shape is checked.
        choices = getattr(response, "choices", None)
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and (
            choices) else None
        if message is None:
            raise MalformedReply("the reply has no message")
        tool_calls = getattr(message, "tool_calls", None) or []
        if not isinstance(tool_calls, list):
            raise MalformedReply("the reply's tool_calls is not a list")
        calls = tool_calls_of(
            (getattr(c, "id", None), getattr(c.function, "name", None),
             getattr(c.function, "arguments", None))
            for c in tool_calls if getattr(c, "function", None) is not None)
        text = message.content
        return Reply(text if isinstance(text, str) else "", calls)
