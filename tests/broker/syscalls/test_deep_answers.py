"""An answer nested too deep to read or write (a person's typed JSON, a host's value) is
refused as `InvalidArgument`, typed, from every front end: never an untyped RecursionError
(the CLI printed `INTERNAL`). The request stays pending and a fitting answer still works.
The refusal is on the record as every refused answer is (a `rejected` `approval.answer`
naming who sent it): JSON too deep even to read was refused before the answer check, so a
hostile answerer's attempts left no trace."""

from __future__ import annotations

import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker import InvalidArgument, Kernel
from broker.approvals.stored import StoreApprovals
from broker.json_text import MAX_STORED_DEPTH
from broker.providers.web import serve
from broker.store import SQLiteStore
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


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])


async def _refusals(kernel: Kernel, request_id: str, count: int) -> list[tuple[str, str, str]]:
    """The `approval.answer` refusals of the request, once `count` are on the record (a front
    end in another OS process leaves its refusals for the broker to audit)."""
    def found() -> list[dict[str, Any]]:
        return [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                and r["detail"].get("request") == request_id]
    with trio.fail_after(30):
        while len(found()) < count:
            kernel.queue.sweep()
            await trio.sleep(0.05)
    return [(r["phase"], r["detail"]["error"], r["detail"]["who"]) for r in found()]


async def test_the_cli_refuses_json_nested_too_deep(kernel: Kernel, db_path: Path) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        refused = await trio.to_thread.run_sync(_cli, "--db", str(db_path), "answer",
                                                request["id"], _deep_text())
        assert refused.returncode == 2 and "INTERNAL" not in refused.stderr
        assert "INVALID_ARGUMENT" in refused.stderr and "nested too deep" in refused.stderr
        assert kernel.approvals()[0]["state"] == "pending"
        [(phase, error, who)] = await _refusals(kernel, request["id"], 1)
        assert (phase, error) == ("rejected", "INVALID_ARGUMENT") and who.startswith("cli:")
        done = await trio.to_thread.run_sync(_cli, "--db", str(db_path), "answer",
                                             request["id"], "[2]")
        assert done.returncode == 0, done.stderr

    _, result = await _ask(kernel, pid, {"question": "List?", "schema": SCHEMA}, answer)
    assert result == [2]


@pytest.mark.parametrize("api", ["kernel", "store"])
@pytest.mark.parametrize("typed", ["deep", "lone surrogate"])
async def test_the_page_refuses_json_nested_too_deep(kernel: Kernel, db_path: Path,
                                                     nursery: trio.Nursery, api: str,
                                                     typed: str) -> None:
    """The page over the kernel (the refusal audited at once) and over a store another broker
    owns (`libos web`: left for that broker to audit). As refused: JSON holding a lone
    surrogate ("\\ud800", which no store can write: the page answered 500, nothing on the
    record; `test_unwritable_answers`)."""
    pid = await _asker(kernel)
    url = await nursery.start(partial(serve, kernel) if api == "kernel" else partial(
        serve, StoreApprovals(SQLiteStore(db_path, writer=False), time.time), who="web:ops"))

    async def answer(request: dict[str, Any]) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(url)).text
            token = text.split('name="csrf" value="')[1].split('"')[0]
            digest = text.split('name="digest" value="')[1].split('"')[0]
            form = {"id": request["id"], "action": "answer", "csrf": token, "digest": digest}
            bad = _deep_text() if typed == "deep" else '["\\ud800"]'
            refused = await client.post(url + "answer", data={**form, "value": bad})
            assert refused.status_code == 400 and "INVALID_ARGUMENT" in refused.text
            assert kernel.approvals()[0]["state"] == "pending"
            who = "web" if api == "kernel" else "web:ops"
            assert await _refusals(kernel, request["id"], 1) == [
                ("rejected", "INVALID_ARGUMENT", who)]
            ok = await client.post(url + "answer", data={**form, "value": "[3]"})
            assert ok.status_code == 303

    _, result = await _ask(kernel, pid, {"question": "List?", "schema": SCHEMA}, answer)
    assert result == [3]
