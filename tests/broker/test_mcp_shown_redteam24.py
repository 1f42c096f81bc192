"""An MCP client's form shows a request, then answers it: the answer binds the request as the
form showed it (its digest), as the page's does (red team 24, lane apprshown). A database
writer (no key) who widens the request's asking scope while the form is out gets no approval
of it: refused (`CONFLICT`), on the record, the request still pending; the request as shown,
answered (here from another OS process, `libos approve`'s function), still applies."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import trio
from mcp import Client

from broker.approvals.stored import answer_in_store
from broker.store import SQLiteStore
from tests.broker.test_mcp import server, value_of


async def test_a_form_answer_over_a_request_edited_meanwhile_is_refused(tmp_path: Path
                                                                        ) -> None:
    db = tmp_path / "libos.db"
    shown: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        [row] = SQLiteStore(db, writer=False).list_approvals("pending")
        shown.append(row["id"])
        with sqlite3.connect(db) as raw:  # the writer, while the form is out
            raw.execute("UPDATE approvals SET cap_scope='/**' WHERE id=?", (row["id"],))
        return types.ElicitResult(action="accept", content={"answer": "once"})

    async with Client(server(tmp_path), mode="legacy", elicitation_callback=elicit) as client:
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool(
                    "write_file", {"path": "/out/x.txt", "data": "shown"}))

            nursery.start_soon(call)
            store = SQLiteStore(db, writer=False)

            def answers() -> list[dict[str, Any]]:
                return [r for r in (s.to_json() for s in store.audit_records())
                        if r["syscall"] == "approval.answer"]

            with trio.fail_after(30):
                while not answers():
                    await trio.sleep(0.05)
            [record] = answers()
            assert record["phase"] == "rejected" and record["detail"]["error"] == "CONFLICT"
            assert "changed since it was shown" in record["detail"]["message"]
            row = store.get_approval(shown[0])
            assert (row["state"], row["sig"]) == ("pending", None) and not results
            # The neighbour: the request as it was shown, answered, applies.
            with sqlite3.connect(db) as raw:
                raw.execute("UPDATE approvals SET cap_scope='/out/**' WHERE id=?", (shown[0],))
            answer_in_store(store, shown[0], "once", who="cli:test", now=time.time())
            with trio.fail_after(30):
                while not results:
                    await trio.sleep(0.05)
            store.close()
        assert value_of(results[0]) == 5
