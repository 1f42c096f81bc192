"""Red-team attacks on the readpath branch (#17): a builtin wrapper's arguments checked once,
its syscall made from the tool table, its answer packed once, and the canonical-path fast
path of `normalize`. Real kernel, real SQLite, real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import InvalidArgument, Kernel, NotCapable
from broker.caps.paths import normalize
from tests.conftest import open_image


class _NoDotDot(str):
    """A path whose `in` lies: it says it holds no "/." nor "//"."""

    def __contains__(self, item: object) -> bool:
        return False


async def _tree(kernel: Kernel, caps: list[str], tools: tuple[str, ...] = ("read_file",)) -> int:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "data" / "note.txt").write_text("hello")
    (root / "secret").mkdir()
    (root / "secret" / "key.txt").write_text("TOPSECRET")
    await open_image(kernel, needs=("fs:/**:read", "fs:/**:write"), tools=tools)
    return kernel.spawn("agent", caps=caps)


class _Shapeshifter(str):
    """A path whose every look lies: `in`, `split`, `==`, `startswith`, `str()`."""

    def __contains__(self, item: object) -> bool:
        return False

    def split(self, *args: Any, **kwargs: Any) -> list[str]:  # type: ignore[override]
        return ["data", "note.txt"]

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        return True

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return "/data/note.txt"


def test_a_lying_str_never_keeps_a_dotdot_component() -> None:
    for raw in ("/data/../secret/x", "/data/./x", "/data//x", "/data/x/", "../x", "a/../../x"):
        for liar in (_NoDotDot, _Shapeshifter):
            try:
                plain: object = normalize(raw, root="/", cwd="/data")
            except NotCapable as exc:
                plain = type(exc)
            try:
                lied: object = normalize(liar(raw), root="/", cwd="/data")
            except NotCapable as exc:
                lied = type(exc)
            assert lied == plain, (liar, raw)


async def test_a_lying_str_path_does_not_climb_out_of_a_capability(kernel: Kernel) -> None:
    pid = await _tree(kernel, ["fs:/data/**:read"])
    for call in ("tool", "syscall"):
        with pytest.raises((NotCapable, InvalidArgument)):
            if call == "tool":
                got = await kernel.call_tool(pid, "read_file",
                                             {"path": _NoDotDot("/data/../secret/key.txt")})
            else:
                got = await kernel.dispatcher.run(kernel.process(pid), None, "fs.read",
                                           {"path": _NoDotDot("/data/../secret/key.txt")})
            assert got != "TOPSECRET"
    assert kernel.verify_audit()[1] == []
