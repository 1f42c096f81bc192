"""A kernel whose owned sandbox fails to close still does the rest of its close: every other
owned sandbox is closed, the events still batched are stored, and the store is let go (the
next broker opens it), and the failure comes out as itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.kernel import Kernel
from sandboxes.base import SandboxDriver


class FailsToClose(SandboxDriver):
    kind, langs = "failing", ("wat",)

    async def aclose(self) -> None:
        raise RuntimeError("the driver's close failed")


class Closes(SandboxDriver):
    kind, langs = "closing", ("ts",)
    closed = False

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("order", ["failing first", "failing last"])
async def test_a_sandbox_that_fails_to_close_leaves_nothing_else_undone(
        tmp_path: Path, order: str) -> None:
    db = tmp_path / "k.db"
    failing, closing = FailsToClose(), Closes()
    drivers = [failing, closing] if order == "failing first" else [closing, failing]
    with pytest.raises(RuntimeError, match="the driver's close failed"):
        async with Kernel.open(db, sandboxes=drivers) as kernel:
            kernel.events.emit_batched(None, "log", line="the call's last line")
    assert closing.closed
    async with Kernel.open(db) as kernel:  # the store was let go
        assert _lines(kernel) == [{"line": "the call's last line"}]
        assert kernel.verify_audit()[1] == []


async def test_a_kernel_whose_sandboxes_close_stores_its_last_lines(tmp_path: Path) -> None:
    """The neighbour: nothing fails, the same close."""
    db = tmp_path / "k.db"
    closing = Closes()
    async with Kernel.open(db, sandboxes=[closing]) as kernel:
        kernel.events.emit_batched(None, "log", line="the call's last line")
    assert closing.closed
    async with Kernel.open(db) as kernel:
        assert _lines(kernel) == [{"line": "the call's last line"}]


def _lines(kernel: Kernel) -> list[dict[str, str]]:
    return [e["data"] for e in kernel.store.events() if e["kind"] == "log"]
