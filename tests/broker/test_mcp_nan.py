"""Lane loose: a tool result holding NaN or an infinity showed two ways over MCP: its text
said `NaN` (as Python's JSON, the embedding API's float and `libos --json` show it) while
its structured content said `null`, so a client reading one saw another value than one
reading the other. Now such a result goes as its text alone (as a result cut to the bound
does); a finite one still goes both ways. The SDK's own client against `libos mcp`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mcp import Client

from tests.broker.test_mcp import MODES, server, value_of

SOURCE = """
export default async function run(args: any, libos: any) {
  return args.finite ? {x: 1.5, y: [1, -2]} : {x: NaN, y: [1, -Infinity]};
}"""


async def test_a_nan_result_shows_one_way(tmp_path: Path) -> None:
    async with Client(server(tmp_path), mode=MODES[0]) as client:
        value_of(await client.call_tool("register_tool", {
            "name": "odd", "lang": "ts", "source": SOURCE, "schema": {"type": "object"}}))
        odd = await client.call_tool("odd", {})
        shown = value_of(odd)  # (Python's JSON reads NaN and -Infinity back)
        assert math.isnan(shown["x"]) and shown["y"] == [1, -math.inf]
        assert odd.content[0].text == json.dumps({"x": math.nan, "y": [1, -math.inf]})
        assert odd.structured_content is None  # (it said {"x": null, "y": [1, null]})
        # The neighbour: a finite result goes as text and as structured content alike.
        finite = await client.call_tool("odd", {"finite": True})
        assert value_of(finite) == finite.structured_content == {"x": 1.5, "y": [1, -2]}
