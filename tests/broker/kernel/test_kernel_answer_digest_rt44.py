"""Red team 44: the kernel's own answer path (`kernel.approve`, an embedder's or an MCP
client's answer, an auto-policy's) without a digest from its front end signed whatever row
was there at its write, not the row it read and checked: a writer's label added in between
was signed by the broker's key and lifted unseen (93440f0 closed this for `libos approve`
through the store; the in-process path kept it). The row it checked is now its digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Conflict
from tests.broker.kernel.test_shown_answers_redteam24 import WIDER, _rejected, _until
from tests.broker.kernel.test_signed_answers_redteam21 import _exporting, _write


async def test_a_kernel_answer_signs_only_the_row_it_checked(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        labels = kernel.store.get_approval(request["id"])["labels"]
        writing = kernel.store.answer_approval

        def edited_first(*args: Any, **kwargs: Any) -> Any:
            _write(db_path, request["id"], {"labels": WIDER})  # between the read and the write
            return writing(*args, **kwargs)

        kernel.store.answer_approval = edited_first  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="changed since it was shown"):
            kernel.approve(request["id"], who="api")
        row = kernel.store.get_approval(request["id"])
        assert (row["state"], row["sig"], row["labels"]) == ("pending", None, WIDER)
        assert _rejected(kernel, request["id"])[0]["detail"]["error"] == "CONFLICT"
        # The neighbour: the row as it is, answered bare, applies.
        kernel.store.answer_approval = writing  # type: ignore[method-assign]
        _write(db_path, request["id"], {"labels": labels})
        kernel.approve(request["id"], who="api")
        await _until(done, "t")
    assert (root / "exports" / "t").read_text() == "tok-123"
