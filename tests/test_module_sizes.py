"""Rooms a newcomer can find (issue 11): no module of the shipped packages over 500 lines, and
the kernel proper (the process table and the lifecycle) under 400."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for pkg in ("broker", "sandboxes") for p in (ROOT / pkg).rglob("*.py"))
MAX_LINES = 500
MAX_KERNEL_LINES = 400


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_module_is_over_500_lines(path: Path) -> None:
    assert lines(path) < MAX_LINES, f"{path.relative_to(ROOT)}: split it into rooms"


def test_the_kernel_proper_is_under_400_lines() -> None:
    assert lines(ROOT / "broker" / "kernel" / "kernel.py") < MAX_KERNEL_LINES
