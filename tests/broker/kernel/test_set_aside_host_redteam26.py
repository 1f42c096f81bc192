"""Red team 26 (LOW): the host's `messages_set_aside` / `events_set_aside` (lane mailhead)
handed a pid past 64 bits to the driver (an untyped `OverflowError`), one of another type
to it too (a list: `Conflict`, "the store failed its write", for a read), and answered `[]`
for a process that never was. Now `NotFound`, as the host's other reads of a process say;
a real process's (ended too) are listed."""

from __future__ import annotations

import pytest

from broker import Kernel
from broker.errors import NotFound
from tests.conftest import open_image


@pytest.mark.parametrize("pid", [2**70, [1], "1", None, 1.5, True, 10**6])
async def test_set_aside_of_no_such_process_is_not_found(kernel: Kernel, pid: object) -> None:
    for listing in (kernel.messages_set_aside, kernel.events_set_aside):
        with pytest.raises(NotFound):
            listing(pid)  # type: ignore[arg-type]


async def test_set_aside_of_a_process_ended_or_not_is_listed(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent")
    assert kernel.messages_set_aside(pid) == [] and kernel.events_set_aside(pid) == []
    kernel.kill(pid)
    assert kernel.messages_set_aside(pid) == [] and kernel.events_set_aside(pid) == []


@pytest.mark.parametrize("pid", [2**70, [1], "1", 1.5, True])
async def test_the_audit_of_a_pid_no_process_can_have_is_not_found(kernel: Kernel,
                                                                   pid: object) -> None:
    """The same for `Kernel.audit(pid)` (red team 26 saw `OverflowError` and the driver's
    `ProgrammingError`); a real process's records, and the whole chain's, as before."""
    with pytest.raises(NotFound):
        kernel.audit(pid)  # type: ignore[arg-type]
    await open_image(kernel)
    pid = kernel.spawn("agent")
    assert kernel.audit(pid) and len(kernel.audit()) > len(kernel.audit(pid))
