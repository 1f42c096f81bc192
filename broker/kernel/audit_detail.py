"""What an audit record may hold of a call: bounded summaries of arguments and results, the
full value as a replay payload when it is small plain data, and the syscall name a record may
carry (a name from the table, never one tool code made up).
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from broker.kernel.summary import MAX_DETAIL_STRING, summarize
from broker.store.audit import UNKNOWN_SYSCALL
from broker.store.vouch import digest
from broker.syscalls import TABLE

MAX_REPLAY_PAYLOAD = 1 << 20
# Tuples, not unions (`str | bytes`): a union in `isinstance` is built anew at each call.
_SIZED = (str, bytes, bytearray)
_SEQUENCES = (list, tuple)
_SCALARS = frozenset({type(None), bool, int, float})
MAX_REQUESTED_NAME = 64
# In the intent of a host's own top-level call (`Kernel.call_tool`, an MCP client's): never a
# pending step's call, which recovery hands its outcome (`step_record.step_call`).
HOST_CALL = "host"

__all__ = ["HOST_CALL", "MAX_DETAIL_STRING", "UNKNOWN_SYSCALL", "audit_name", "pack_payload",
           "payload_digest", "requested_name", "summarize"]


def audit_name(name: Any) -> str:
    """The syscall a record may name for a requested one: a name from the table, never what
    tool code made up (that would let it write, say, an `audit.anchor` record)."""
    return name if isinstance(name, str) and name in TABLE else UNKNOWN_SYSCALL


def requested_name(name: Any) -> str:
    """A requested name as an `unknown` record's detail keeps it: bounded, and inert on any
    surface (printable ASCII, every other character escaped)."""
    return (ascii(name)[1:-1] if isinstance(name, str) else ascii(name))[:MAX_REQUESTED_NAME]


def pack_payload(value: Any, text_size: int | None = None) -> bytes | None:
    """A full value as msgpack for replay, or None when it is too big or not plain data.
    A value surely too big is not packed at all: packing an 8 MiB read only to throw it
    away cost the broker's thread milliseconds, three times per call (syscall outcome, tool
    outcome, stored observation). `text_size`: the length of the value's canonical JSON,
    when known (`args_hash_sized`); at most `MAX_REPLAY_PAYLOAD`, packing it costs little,
    so it is packed without that walk (the payload's own size is still checked)."""
    if value is None:
        return _NIL
    if (text_size is None or text_size > MAX_REPLAY_PAYLOAD) and surely_bigger(
            value, MAX_REPLAY_PAYLOAD):
        return None
    try:
        payload = _packer().pack(value)  # (a failed pack leaves the packer empty)
    except (TypeError, ValueError, OverflowError, BufferError):  # (a view with gaps)
        return None
    return payload if len(payload) <= MAX_REPLAY_PAYLOAD else None


_NIL = msgpack.packb(None)
_NIL_DIGEST = digest(_NIL)


def payload_digest(payload: bytes) -> str:
    """`digest(payload)`: of a nil (a call that answers nothing, as most effects do) known
    beforehand."""
    return _NIL_DIGEST if payload == _NIL else digest(payload)

_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: `packb` builds one per call (most of its cost for a small
    value), and a Packer is not safe to share (WASM tools make syscalls on worker threads)."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = packer = msgpack.Packer(use_bin_type=True)
        return packer


def surely_bigger(value: Any, limit: int) -> bool:
    """Whether `value` packs to more than `limit` bytes for sure: its strings' characters and
    bytes, and one byte per item, add up past it. Stops as soon as they do. (Plain types are
    told by `type(...) is`, cheaper than `isinstance`; anything else by `isinstance`.)"""
    kind = type(value)
    if kind in _SCALARS:
        return False
    size, stack = 0, [value]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bytes:
            size += len(item)
        elif kind is dict:
            size += 1
            push(item.keys())
            push(item.values())
        elif kind is list or kind is tuple:
            size += 1
            push(item)
        elif kind in _SCALARS:
            size += 1
        else:
            size += len(item) if isinstance(item, _SIZED) else 1
            if isinstance(item, dict):
                push(item.keys())
                push(item.values())
            elif isinstance(item, _SEQUENCES):
                push(item)
        if size > limit:
            return True
    return False
