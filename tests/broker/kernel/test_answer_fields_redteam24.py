"""Red team 24 (HIGH): a signed answer covered the request's id, process, call, arguments'
hash and times, but not the columns `apply` lifts the grant from: `labels` (what the grant
declassifies), `resource`, `cap_kind`, `cap_right`, `cap_id`, `cap_scope`. A database writer
(no key) who edits them under a person's signed answer had it applied to what the person was
never shown: here `labels` widened, so the grant declassified `pii` too. Each is covered now:
refused, pending again, on the record; the same answer over the row as signed is applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.broker.kernel.test_signed_answers_redteam21 import (
    _exporting,
    _refused,
    _signed_for,
    _write,
)


@pytest.mark.parametrize("edit", [
    {"labels": json.dumps(["pii", "secret"])},
    {"cap_right": "read"},
    {"resource": "/exports/other"},
    {"cap_scope": "/**"},
])
async def test_a_signed_answer_over_edited_request_fields_is_refused(
        db_path: Path, tmp_path: Path, edit: dict[str, str]) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        signed = _signed_for(kernel, request)
        shown = {k: kernel.store.get_approval(request["id"])[k] for k in edit}
        _write(db_path, request["id"], {**edit, **signed})  # edited under the signed answer
        record = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "does not hold" in record["detail"]["message"]
        assert not [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "admin"]
        # The neighbour: the same person's answer over the request as it was shown: applied.
        _write(db_path, request["id"], {**shown, **signed})
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
    assert (root / "exports" / "t").read_text() == "tok-123"
