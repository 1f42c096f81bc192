"""Red team 5: a host's end taken back by a later refused act of the same kind
(broker/store/ends.py `_take_back`). The host ends a process (`host.exit`, recorded), then
ends it again (an operator's retry: refused, the process has ended: a `rejected` record of
`host.exit`, with no `admin` record of its own). That refusal takes back the first, genuine
end, so a writer who then sets the row runnable has it served again at the next open:
invariant 15's check was bypassed (both backends). A second host kill writes no rejected
record. Fixed: the rejected record of an ending act carries `since` (the head before the
act), and takes back only an end recorded after it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE
from tests.conftest import open_image

fs_root = links.fs_root


async def test_a_refused_second_host_exit_does_not_take_back_the_first(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        kernel.exit(pid, 3, "done")
        with contextlib.suppress(Exception):
            kernel.exit(pid, 3, "done")  # (a retry: refused or a no-op, never an end taken back)
        rejected = [r for r in kernel.audit() if r["phase"] == "rejected"]
    edit(store_at, REVIVE, (pid,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert rejected  # (the retry was refused after all)
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
