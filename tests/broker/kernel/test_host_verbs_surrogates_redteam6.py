"""Red team 6: the host's verbs given a name holding a lone surrogate (text an embedder took
from a file name or argv). Each raised an untyped UnicodeEncodeError from the store's
driver (SQLite encodes text as UTF-8): `spawn` of such an image name or capability, `fork`
with such a capability, `commit_image` to such a name, `raise_event` of such a name.
Severity: low (the host's own API; invariant 18: errors come out typed). Now
`InvalidArgument` (`faults.store_faults_typed`, which every verb runs in), and nothing of the
verb is left: the neighbour verbs work and the chain verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel

S = "x\ud800"


@pytest.mark.parametrize("verb", ["spawn image", "spawn caps", "fork caps", "commit_image",
                                  "raise_event"])
async def test_a_host_verb_given_a_lone_surrogate_is_refused_typed(
        tmp_path: Path, verb: str) -> None:
    async with Kernel.open(tmp_path / "db") as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a", caps=["clock:*:read"])
        acts: dict[str, Any] = {
            "spawn image": lambda: kernel.spawn(S),
            "spawn caps": lambda: kernel.spawn("a", caps=[f"clock:{S}:read"]),
            "fork caps": lambda: kernel.fork(pid, caps=[f"clock:{S}:read"]),
            "commit_image": lambda: kernel.commit_image(pid, S),
            "raise_event": lambda: kernel.raise_event(S, 1),
        }
        with pytest.raises(InvalidArgument):
            acts[verb]()
        assert kernel.spawn("a", caps=["clock:*:read"]) > pid  # the neighbour
        assert kernel.raise_event("e", 1) > 0
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(tmp_path / "db") as kernel:
        assert kernel.verify_audit()[1] == []
