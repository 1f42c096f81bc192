"""Red team 35: arguments nested deeper than the MCP SDK writes (pydantic's serializer stops
at about 250 levels; a call may nest 512) failed as "mcp server peer sent an invalid result":
the audit blamed the server for a call that never left the broker. Now the refusal is the
caller's, typed `InvalidArgument`, saying it was not sent; a real server in a subprocess."""

from __future__ import annotations

from typing import Any

import pytest

from broker import Kernel
from broker.errors import InvalidArgument
from tests.broker.kernel.test_mcp_tools import attached, records


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def test_arguments_too_deep_for_the_sdk_are_the_callers_not_the_servers(
        kernel: Kernel) -> None:
    async with attached(kernel) as (_peer, pid):
        with pytest.raises(InvalidArgument, match="cannot be sent to mcp server peer, not sent"):
            await kernel.call_tool(pid, "peer.echo", {"text": "hi", "extra": _nested(400)})
        # The neighbour: the session goes on, and a call nested as the SDK writes is sent.
        assert await kernel.call_tool(pid, "peer.echo", {"text": "hi", "extra": _nested(100)}
                                      ) == {"result": "hi"}
    refused, sent = [r for r in records(kernel, "host.peer.echo", "outcome")]
    assert refused["detail"]["error"] == "INVALID_ARGUMENT"
    assert "sent an invalid result" not in refused["detail"]["message"]
    assert sent["detail"]["ok"] is True
    assert kernel.verify_audit()[1] == []
