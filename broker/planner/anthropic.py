"""The Anthropic messages backend (official `anthropic` SDK, extra `llm`)."""

from __future__ import annotations

from typing import Any

from broker.planner.chat import (
    MalformedReply,
    Reply,
    SdkBackend,
    group_tool_results,
    reply_body,
    tool_calls_of,
)

DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"


def render(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in group_tool_results(turns):
        if isinstance(turn, list):
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": t["id"], "content": t["content"],
                 "is_error": t["error"]} for t in turn]})
        elif turn["role"] == "user":
            messages.append({"role": "user", "content": turn["text"]})
        else:
            content: list[dict[str, Any]] = []
            if turn["text"]:
                content.append({"type": "text", "text": turn["text"]})
            content += [{"type": "tool_use", "id": c["id"], "name": c["name"],
                         "input": c["arguments"] if isinstance(c["arguments"], dict)
                         else {"_unparsed": str(c["arguments"])}} for c in turn["calls"]]
            messages.append({"role": "assistant", "content": content})
    return messages


class AnthropicBackend(SdkBackend):
    key_env = DEFAULT_KEY_ENV

    def sdk_client_class(self) -> Any:
        from anthropic import AsyncAnthropic  # the `llm` extra

        return AsyncAnthropic

    def http_client_class(self) -> Any:
        from anthropic import DefaultAsyncHttpxClient

        return DefaultAsyncHttpxClient

    async def complete(self, system: str, turns: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> Reply:
        s = self.settings
        extra: dict[str, Any] = {}
        if s.get("temperature") is not None:
            extra["temperature"] = s["temperature"]
        if tools:
            extra["tools"] = [{"name": t["name"], "description": t["description"],
                               "input_schema": t["schema"]} for t in tools]
        async with await self.client() as client, reply_body():
            response = await client.messages.create(
                model=s.get("model", "claude-sonnet-4-5"), system=system,
                max_tokens=int(s.get("max_tokens", 4096)), messages=render(turns), **extra)
        content = getattr(response, "content", None)
        if not isinstance(content, list):
            raise MalformedReply("the reply has no content")
        text = "".join(b.text for b in content
                       if getattr(b, "type", None) == "text" and isinstance(b.text, str))
        calls = tool_calls_of((getattr(b, "id", None), getattr(b, "name", None),
                               getattr(b, "input", None))
                              for b in content if getattr(b, "type", None) == "tool_use")
        return Reply(text, calls)
