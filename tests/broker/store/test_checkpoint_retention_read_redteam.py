"""Red team (session 15): since old checkpoints are dropped once every `TRIM_EVERY`, what is
read of the log is filtered by the retention (`_KEPT`). A command that opens the store on its
own (`libos checkpoints`, `libos fork --checkpoint`) has no retention of its own: it must
read the broker's, not the default, or it shows checkpoints the broker's retention dropped
(a retention below the default) and hides, or refuses to fork from, ones it keeps (above).
Both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.store.checkpoints import DEFAULT_KEEP
from broker.store.opening import open_store


@pytest.mark.parametrize("keep", [3, DEFAULT_KEEP + 4])
def test_a_command_reads_the_brokers_retention(store_at: Path | str, keep: int) -> None:
    broker = open_store(store_at)
    try:
        broker.set_checkpoint_retention(keep)
        for step in range(keep + 10):
            broker.save_checkpoint(7, step, {"step": step})
        kept = [c["id"] for c in broker.checkpoint_log(7)]
        assert len(kept) == keep
        cli = open_store(store_at, writer=False)  # as `libos checkpoints` opens it
        try:
            assert [c["id"] for c in cli.checkpoint_log(7)] == kept
            assert cli.logged_checkpoint(7, kept[0]) is not None
            assert cli.logged_checkpoint(7, kept[0] - 1) is None
        finally:
            cli.close()
    finally:
        broker.close()
