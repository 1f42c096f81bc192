"""A syscall's answer as a WASM tool is sent it: `{ok, value}` in msgpack, within the
driver's message bound. The ABI sends it (`GuestAbi._respond`); the driver says beforehand
whether it could (`WasmSandbox.unsendable`), so a syscall whose answer is taken (a message,
an event, a child's end) records the failure the tool would get, not an `ok`."""

from __future__ import annotations

from typing import Any

from broker.errors import InvalidArgument, LibosError, LimitExceeded
from broker.protocol import pack


def answer_bytes(value: Any, bound: int) -> bytes | LibosError:
    """The bytes of a successful answer, or the error the tool gets instead."""
    try:
        response = pack({"ok": True, "value": value})
    except (TypeError, ValueError, OverflowError):
        return InvalidArgument("its result cannot be encoded")
    if len(response) > bound:
        return LimitExceeded(f"response of {len(response)} bytes is over {bound}")
    return response
