"""Lane heldbits: `anchored_reads.count_as_anchored` (what `libos ps` counts) gave the
reader's store the span past the signed anchor by setting the store's own `unvouched_span`
from outside (a writer's, found at its open: `AuditChain`), so that store then read as a
writer that had found it so at its open. Now the span is `capability_vouches`'s argument:
the count is the same, and the store's own span is left alone."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.store import AuditRecord
from broker.store.anchored_reads import count_as_anchored
from broker.store.opening import open_store
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.conftest import open_image

fs_root = links.fs_root


async def test_a_reader_s_count_leaves_the_store_s_own_span_alone(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
    append_past_head(store_at, AuditRecord(phase="admin", syscall="proc.end", pid=pid,
                                           detail={"state": "killed", "reason": "forged"}))
    reader = open_store(store_at, writer=False)
    try:
        assert count_as_anchored(reader) == 1  # (the forged end lies past the signed head)
        assert reader.chain_links().ended(pid) is None  # (and so ends nothing here)
        assert getattr(reader, "unvouched_span", None) is None
    finally:
        reader.close()
