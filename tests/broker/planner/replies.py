"""Model replies made to order, in each API's wire format, for the loopback server."""

from __future__ import annotations

import json
from typing import Any

Call = tuple[str, str, Any]  # id, tool name, arguments (an object, or raw JSON text)


def reply(kind: str, text: str, calls: list[Call] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    if kind == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [
                {"id": id_, "type": "function", "function": {
                    "name": name, "arguments": args if isinstance(args, str)
                    else json.dumps(args)}} for id_, name, args in calls]
        return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1,
                "model": "m", "choices": [{"index": 0, "message": message,
                                           "finish_reason": "tool_calls" if calls else "stop"}]}
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": id_, "name": name,
                 "input": json.loads(args) if isinstance(args, str) else args}
                for id_, name, args in calls]
    return {"id": "msg_x", "type": "message", "role": "assistant", "model": "m",
            "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None,
            "content": content, "usage": {"input_tokens": 1, "output_tokens": 1}}


def raw_reply(kind: str, call_id: str, name: str, arguments: str) -> bytes:
    """A reply with one call whose arguments are `arguments` verbatim: the JSON text of a
    string for chat completions, the value itself for Anthropic (so even JSON too deep for
    a Python encoder can be sent)."""
    marker = "__ARGUMENTS__"
    body = json.dumps(reply(kind, "", [(call_id, name, {"x": marker})]))
    if kind == "openai":
        return body.replace(json.dumps(json.dumps({"x": marker})),
                            json.dumps(arguments)).encode()
    return body.replace(json.dumps({"x": marker}), arguments).encode()
