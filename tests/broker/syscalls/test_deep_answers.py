"""An answer nested too deep to read or write (a person's typed JSON, a host's value) is
refused as `InvalidArgument`, typed, from every front end: never an untyped RecursionError
(the CLI printed `INTERNAL`). The request stays pending and a fitting answer still works."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker import InvalidArgument, Kernel
from broker.json_text import MAX_STORED_DEPTH
from broker.providers.web import serve
from tests.broker.kernel.test_approvals import _cli
from tests.broker.syscalls.test_human import _ask, _asker

DEPTH = 5_000
SCHEMA = {"type": "array"}  # any list fits: only the depth is wrong


def _deep_text() -> str:
    return "[" * DEPTH + "]" * DEPTH


def _deep_value(depth: int = DEPTH) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_a_host_answer_nested_too_deep(kernel: Kernel) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        # Past the recursion limit, and under it but past what is stored (it could not be
        # read again from a deeper stack).
        for depth in (DEPTH, MAX_STORED_DEPTH + 88):
            with pytest.raises(InvalidArgument, match="nested too deep"):
                kernel.answer(request["id"], _deep_value(depth))
        assert kernel.approvals()[0]["state"] == "pending"
        kernel.answer(request["id"], [1])

    request, result = await _ask(kernel, pid, {"question": "List?", "schema": SCHEMA}, answer)
    assert result == [1]
    records = [r for r in kernel.audit() if r["detail"].get("request") == request["id"]]
    assert [r["phase"] for r in records] == ["ask", "rejected", "rejected", "admin"]


async def test_the_cli_refuses_json_nested_too_deep(kernel: Kernel, db_path: Path) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        code, out = await trio.to_thread.run_sync(_cli, "answer", request["id"], _deep_text(),
                                                  "--db", str(db_path))
        assert code == 2 and "INTERNAL" not in str(out)
        assert kernel.approvals()[0]["state"] == "pending"
        code, _ = await trio.to_thread.run_sync(_cli, "answer", request["id"], "[2]",
                                                "--db", str(db_path))
        assert code == 0

    _, result = await _ask(kernel, pid, {"question": "List?", "schema": SCHEMA}, answer)
    assert result == [2]


async def test_the_page_refuses_json_nested_too_deep(kernel: Kernel,
                                                     nursery: trio.Nursery) -> None:
    pid = await _asker(kernel)
    url = await nursery.start(partial(serve, kernel))

    async def answer(request: dict[str, Any]) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            token = (await client.get(url)).text.split('name="csrf" value="')[1].split('"')[0]
            form = {"id": request["id"], "action": "answer", "csrf": token}
            refused = await client.post(url + "answer", data={**form, "value": _deep_text()})
            assert refused.status_code == 400 and "INVALID_ARGUMENT" in refused.text
            assert kernel.approvals()[0]["state"] == "pending"
            ok = await client.post(url + "answer", data={**form, "value": "[3]"})
            assert ok.status_code == 303

    _, result = await _ask(kernel, pid, {"question": "List?", "schema": SCHEMA}, answer)
    assert result == [3]
