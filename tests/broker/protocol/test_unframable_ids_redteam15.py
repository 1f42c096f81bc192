"""Red team 15 on `unframable`, the check `proc.receive`, `proc.wait` and `proc.wait_event`
make before a taken message, event or child's end is recorded `ok` for a Deno or Pyodide
tool (`Sandbox.unsendable`).

LOW (a sender sizing its message): the check framed the answer with `id` and `seq` 0, one
byte each in msgpack, but the sandbox's channel frames it with the syscall's own (the
tool's numbering: up to 9 bytes each). A message whose answer came within those bytes of
the frame's bound passed the check, was recorded `ok` and taken, and the channel then
failed to frame it: the tool got `InvalidArgument` (`deno_channel._answer`), the message
gone with a record saying it was delivered. Now the check frames with the largest ids.
"""

from __future__ import annotations

import pytest

from broker.errors import ProtocolError
from broker.protocol import DEFAULT_LIMITS
from broker.protocol.frames import encode_frame, pack
from broker.protocol.messages import SyscallResult, unframable

BOUND = DEFAULT_LIMITS.max_frame_bytes


def _answer_of(frame_bytes: int, *, id: int = 0, seq: int = 0) -> dict[str, object]:
    """A message as `proc.receive` answers it, padded so that its sysret with (`id`, `seq`)
    is `frame_bytes` long."""
    message = {"id": 7, "from": 3, "body": "", "sent": 1.5}
    empty = len(pack(SyscallResult.success(id, seq, message).to_wire()))
    pad = frame_bytes - empty
    message["body"] = "x" * pad
    # (a str's length header grows past 65535 bytes: trim what it took)
    message["body"] = "x" * (pad - (len(pack(SyscallResult.success(id, seq, message).to_wire()))
                                    - frame_bytes))
    assert len(pack(SyscallResult.success(id, seq, message).to_wire())) == frame_bytes
    return message


def test_an_answer_that_fits_only_with_small_ids_is_refused_before_it_is_taken() -> None:
    answer = _answer_of(BOUND)
    # The channel's frame for a tool's 300th call's 70000th syscall: past the bound.
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(SyscallResult.success(300, 70_000, answer).to_wire())
    why = unframable(answer)
    assert why is not None and "exceeds" in why


def test_an_answer_that_fits_whatever_the_ids_passes_and_is_sent() -> None:
    answer = _answer_of(BOUND, id=(1 << 53) - 1, seq=(1 << 53) - 1)
    assert unframable(answer) is None
    encode_frame(SyscallResult.success(300, 70_000, answer).to_wire())
