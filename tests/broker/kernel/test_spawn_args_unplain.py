"""Lane loose: the host's `spawn(args=...)` was not checked as the host's other values are
since red team 6 (`too_deep.refuse_unplain`): a set, a tuple key, keys of two types or a
lone surrogate made a process whose args JSON (a checkpoint, a model planner's goal, a
front end) cannot carry as they are. Now `InvalidArgument` before anything is written, the
spawn refused on the record; plain args spawn as before."""

from __future__ import annotations

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from tests.broker.kernel.test_host_values_unstorable_redteam6 import UNSTORABLE


@pytest.mark.parametrize("name", list(UNSTORABLE))
async def test_a_spawns_unplain_args_are_refused_typed_before_anything_is_written(
        kernel: Kernel, name: str) -> None:
    await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
    with pytest.raises(InvalidArgument, match="the spawn's args is not plain JSON"):
        kernel.spawn("a", args={"goal": "g", "v": UNSTORABLE[name]})
    last = kernel.audit()[-1]
    assert (last["syscall"], last["phase"], last["detail"]["error"]) == (
        "host.spawn", "rejected", "INVALID_ARGUMENT")
    assert kernel.store.list_processes() == []
    # The neighbour: plain args (deep enough, big numbers, any Unicode) spawn as before.
    plain = {"goal": "g\u00e9", "v": [1.5, 2**70, None, {"k": [True]}]}
    pid = kernel.spawn("a", args=plain)
    assert kernel.process(pid).args == plain
    assert kernel.verify_audit()[1] == []
