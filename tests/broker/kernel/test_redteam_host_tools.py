"""Red-team attacks on host tools (issue 12): a caller's hostile arguments are the caller's
fault, typed and audited, before anything of the embedder's runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel, host_tool


@host_tool(kind="calc", right="run", schema={"type": "object"})
def calc(**numbers: Any) -> str:
    return "ran"


@pytest.mark.parametrize("args", [{"n": 2**70}, {"n": {1, 2}}, {1: 2}])
async def test_arguments_that_are_not_plain_data_are_the_callers_fault(
        db_path: Path, args: dict[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A host caller's arguments that JSON cannot carry (a huge int, a set, a non-str key) are
    an InvalidArgument that says so, audited as rejected, with nothing run and nothing
    blamed on (or logged for) the tool's resource function; a plain call still runs."""
    async with Kernel.open(db_path, host_tools=[calc]) as kernel:
        await kernel.register_image(AgentImage("calc", tools=("calc",), needs=["calc:*:run"]))
        pid = kernel.spawn("calc", caps=["calc:*:run"])
        before = len(kernel.audit())
        with pytest.raises(InvalidArgument, match="arguments are not plain data"):
            await kernel.call_tool(pid, "calc", args)
        records = [r for r in kernel.audit()[before:] if r["syscall"] == "host.calc"]
        assert [r["phase"] for r in records] == ["rejected"]
        assert "resource function" not in caplog.text
        assert await kernel.call_tool(pid, "calc", {"n": 1}) == "ran"
