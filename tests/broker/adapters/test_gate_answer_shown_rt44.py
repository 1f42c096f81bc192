"""Red team 44: the gate answers for a framework's person (`ToolGate.answer`) what the
framework showed them, the request handed over when the call asked (`Asked.request`, its
`digest` with it). It answered bare: the row was read again when the person answered, minutes
later perhaps, and signed as it was then (by the broker's key), so a database writer's edit
between the showing and the answer, a label added, was approved and lifted unseen. The
answer now carries the digest of what was shown: an edited row is refused (`Conflict`, on
the record), nothing signed, and the call hands the framework the request as it is now, to
show its person again."""

from __future__ import annotations

import json

from broker.adapters.gate import Asked, Done, ToolGate
from tests.broker.adapters.conftest import World
from tests.broker.store.conftest import raw

ASK = {"to": "ann@partner.com", "subject": "x"}


async def test_an_edit_after_the_framework_showed_the_request_is_not_signed(
        world: World) -> None:
    kernel = world.kernel
    async with ToolGate.open(kernel, world.pid, who="test") as gate:
        asked = await gate.start("k", "send_email", ASK)
        assert isinstance(asked, Asked) and asked.request["labels"] == []
        approval_id = asked.request["id"]
        with raw(kernel.store.path) as db:  # the writer, after the showing
            db.execute("UPDATE approvals SET labels=? WHERE id=?",
                       (json.dumps(["secret"]), approval_id))
        again = await gate.answer("k", True)  # shown to the framework's person again
        assert isinstance(again, Asked) and again.fresh
        assert (again.request["id"], again.request["labels"]) == (approval_id, ["secret"])
        row = kernel.store.get_approval(approval_id)
        assert (row["state"], row["sig"]) == ("pending", None)
        assert world.outbox == []
        assert [r["detail"]["error"] for r in kernel.audit()
                if r["syscall"] == "approval.answer" and r["phase"] == "rejected"
                and r["detail"].get("request") == approval_id] == ["CONFLICT"]
        # The neighbour: the request as shown now, answered, runs.
        assert await gate.answer("k", True) == Done(True, {"queued": 1})
    assert world.outbox == ["ann@partner.com"]
