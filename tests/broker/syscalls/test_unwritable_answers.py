"""An answer holding a lone surrogate (JSON's "\\ud800": Python's parser reads it, no UTF-8
can hold it) is refused as `InvalidArgument` on the record, from every front end (the page:
`test_deep_answers`): the store could not write it, so the answer raised an untyped
UnicodeEncodeError after the check (the CLI printed `INTERNAL`) and the attempt left no
trace. The request stays pending and a fitting answer still works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel
from tests.broker.syscalls.test_deep_answers import _cli, _refusals
from tests.broker.syscalls.test_human import _ask, _asker

SCHEMA = {"type": "object"}  # any object fits: only the text is wrong
LONE = "\ud800"


async def test_a_host_answer_no_store_can_hold(kernel: Kernel) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        for value in ({"a": LONE}, {LONE: 1}):
            with pytest.raises(InvalidArgument, match="UTF-8"):
                kernel.answer(request["id"], value)
        assert kernel.approvals()[0]["state"] == "pending"
        kernel.answer(request["id"], {"a": "\u00e9"})

    request, result = await _ask(kernel, pid, {"question": "Map?", "schema": SCHEMA}, answer)
    assert result == {"a": "\u00e9"}
    records = [r for r in kernel.audit() if r["detail"].get("request") == request["id"]]
    assert [r["phase"] for r in records] == ["ask", "rejected", "rejected", "admin"]
    assert records[1]["detail"]["error"] == "INVALID_ARGUMENT"


async def test_the_cli_refuses_a_lone_surrogate(kernel: Kernel, db_path: Path) -> None:
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        refused = await trio.to_thread.run_sync(_cli, "--db", str(db_path), "answer",
                                                request["id"], '{"a": "\\ud800"}')
        assert refused.returncode == 2 and "INTERNAL" not in refused.stderr, refused.stderr
        assert "INVALID_ARGUMENT" in refused.stderr
        assert kernel.approvals()[0]["state"] == "pending"
        [(phase, error, who)] = await _refusals(kernel, request["id"], 1)
        assert (phase, error) == ("rejected", "INVALID_ARGUMENT") and who.startswith("cli:")
        done = await trio.to_thread.run_sync(_cli, "--db", str(db_path), "answer",
                                             request["id"], '{"a": 2}')
        assert done.returncode == 0, done.stderr

    _, result = await _ask(kernel, pid, {"question": "Map?", "schema": SCHEMA}, answer)
    assert result == {"a": 2}


async def test_the_cli_refuses_an_id_or_scope_not_utf8(kernel: Kernel, db_path: Path) -> None:
    """Command-line bytes that are not UTF-8 (Python keeps them as lone surrogates) in the
    request id or an `always` answer's scope: refused, typed, never `INTERNAL`."""
    pid = await _asker(kernel)

    async def answer(request: dict[str, Any]) -> None:
        for argv in (("answer", "apr_\udcff", "1"), ("deny", request["id"][:9] + "\udcff"),
                     ("approve", request["id"], "--always", "--scope", "\udcff")):
            refused = await trio.to_thread.run_sync(_cli, "--db", str(db_path), *argv)
            assert refused.returncode == 2 and "INTERNAL" not in refused.stderr, refused.stderr
            assert "INVALID_ARGUMENT" in refused.stderr and "not UTF-8" in refused.stderr
        assert kernel.approvals()[0]["state"] == "pending"
        [(phase, error, who)] = await _refusals(kernel, request["id"], 1)
        assert (phase, error) == ("rejected", "INVALID_ARGUMENT") and who.startswith("cli:")
        # The ids that are not UTF-8 are on the record too (as the store could keep them).
        named = [r["detail"]["request"] for r in kernel.audit()
                 if r["syscall"] == "approval.answer" and r["phase"] == "rejected"]
        assert len(named) == 3 and all(n.startswith("apr_") for n in named)
        done = await trio.to_thread.run_sync(_cli, "--db", str(db_path), "answer",
                                             request["id"], '{"a": 4}')
        assert done.returncode == 0, done.stderr

    _, result = await _ask(kernel, pid, {"question": "Map?", "schema": SCHEMA}, answer)
    assert result == {"a": 4}
