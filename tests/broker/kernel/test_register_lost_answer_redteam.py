"""Red team (session 15): a registration is taken back when the commit of its outcome fails.
On PostgreSQL a commit can fail without anyone knowing whether it went through: the
connection broke after the COMMIT reached the server, and the server cannot be reached to
ask (`PostgresStore._went_through`). Taking the registration back then tells the caller "not
registered" for a tool the store may hold, and that the chain may then contradict (its
`taken_back` record after the row it says was never written). Such a failure's outcome is
unknown: the registration stays, as the store will say (real PostgreSQL, through a proxy
that loses the COMMIT's answer and then refuses connections, `tests/broker/store/pg_proxy`).
"""

from __future__ import annotations

import time
from pathlib import Path

from broker import AgentImage, Conflict
from broker.store.pg_connection import RETRY
from broker.store.postgres import WrittenMeanwhile
from tests.broker.kernel.test_register_fails import NIL, _kernel
from tests.broker.store.pg_proxy import Proxy


async def test_a_registration_whose_commit_answer_was_lost_is_not_said_taken_back(
        pg_database: str, proxy: Proxy, tmp_path: Path) -> None:
    told: Conflict | None = None
    try:
        async with _kernel(proxy.dsn(pg_database), tmp_path) as kernel:
            await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                                   needs=("tool:*:register,call",)))
            pid = kernel.spawn("reg", caps=["tool:wat:register"])
            await kernel.call_tool(pid, "register_tool", {"name": "good", "lang": "wat",
                                                          "source": NIL})
            # The commit carrying the tool's row and its outcome reaches the server (and
            # commits); its answer is lost, and the server cannot be reached to ask.
            proxy.trigger, proxy.refusing = b"COMMIT", True
            try:
                await kernel.call_tool(pid, "register_tool", {"name": "bad", "lang": "wat",
                                                              "source": NIL})
            except Conflict as exc:
                told = exc
            assert proxy.lost == 1
            proxy.refusing = False
            time.sleep(RETRY[1])  # (past the reconnect's backoff)
            assert told is not None
            # Nobody knows whether it was registered: the caller is not told it was not.
            assert "taken back" not in told.message
            assert "unknown" in told.message
            # memory keeps it, as the store will (the commit went through)
            assert "bad" in {t["name"] for t in kernel.list_tools(pid)}
    except WrittenMeanwhile:
        pass  # (its close finds its own lost commit behind the head: it stops, as designed)
    async with _kernel(pg_database, tmp_path) as kernel:  # reopened: the store as it is
        assert "bad" in kernel.store.process_tools(pid)
        assert not kernel.store.process_tools(pid)["bad"].get("refused")
        assert await kernel.call_tool(pid, "bad", {}) is None
        # (what verify says of the records the stopped writer could not sign is the lost
        # commit's own matter: nothing of the registration is a problem; the process's
        # capability rows, granted by records no anchor signed, are named and held no more)
        assert not [p for p in kernel.verify_audit()[1]
                    if "tool" in p and "capability" not in p]
