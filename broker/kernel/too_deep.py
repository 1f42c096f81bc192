"""Arguments JSON cannot encode: text that is not Unicode, or values nested past Python's
recursion limit (a list in a list, thousands deep: about 1000 levels). Neither can be
hashed, stored or checkpointed, so the call is refused, typed (`InvalidArgument`), before
anything of it is written; its record keeps what can be kept (a summary stops at 4 levels),
and the process goes on. Arguments nested past `MAX_DEPTH` are refused the same way even
where this stack could still encode them: the recursion limit counts the stack a value is
encoded from, so a value taken just under it here could not be read again from a deeper
one (`libos audit --verify`, reading the object back). A call's result is held to the same
bound where the dispatcher records it (`result_too_deep`): past it, the call's outcome is the
failure `InvalidArgument`, recorded, and its caller goes on."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from broker.errors import InvalidArgument, LibosError, LimitExceeded
from broker.json_text import MAX_STORED_DEPTH, depth_within, encoder
from broker.kernel.summary import summarize, without_surrogates
from broker.planner import CallTool, Observation
from broker.store import AuditRecord, args_hash
from broker.store.interface import Store

MAX_DEPTH = MAX_STORED_DEPTH  # a call's arguments nest arrays and objects at most this deep


def unencodable(error: ValueError | RecursionError | TypeError, args: Any
                ) -> tuple[InvalidArgument, Any]:
    """The typed refusal of arguments JSON cannot encode, and what of them a record keeps.
    A TypeError is canonical JSON's, which sorts keys: keys of two types (`{1: "a", "1":
    "b"}`, which JSON would make one) or of no JSON type; a ValueError other than a
    UnicodeEncodeError, its cycle found (a host's value holding itself: untyped before,
    red team 35)."""
    if isinstance(error, RecursionError):
        return too_deep(), without_surrogates(summarize(args))
    if not isinstance(error, UnicodeEncodeError | TypeError):
        return (InvalidArgument("the arguments cannot be encoded as JSON (a value holding "
                                f"itself, or a released view: {str(error)[:120]})"),
                without_surrogates(summarize(args)))
    if isinstance(error, TypeError):
        return (InvalidArgument("the arguments hold keys JSON cannot keep as they are (keys "
                                f"of two types, or of no JSON type: {str(error)[:120]})"),
                without_surrogates(summarize(args)))
    return (InvalidArgument("the arguments hold text that is not Unicode (a lone surrogate)"),
            without_surrogates(args))


def too_deep() -> InvalidArgument:
    return InvalidArgument("the arguments are nested too deep to encode as JSON (more than "
                           f"{min(MAX_DEPTH, sys.getrecursionlimit())} levels)")


def result_too_deep(syscall: str, result: Any, payload: bytes | None) -> bool:
    """Whether a syscall's result nests past `MAX_DEPTH`, the bound its arguments have (it
    is stored, read again, and a planner's checkpoint holds it a level deeper still).
    Measured where a result enters the broker: a `tool.call` only relays one (a sandbox's,
    bounded by its frames' nesting; a host tool's, by `host_tools._plain`; a builtin's, by
    its own syscall's outcome). `payload`, the result as msgpack (None: not packed), takes at
    least a byte a level: a shorter one is never walked."""
    return syscall != "tool.call" and (payload is None or len(payload) > MAX_DEPTH) and (
        not depth_within(result, MAX_DEPTH))


def refuse_stored(value: Any, what: str) -> None:
    """`InvalidArgument` for a value the host hands the broker to store (an image, an exit
    result, an object, a message, an event's data) nested past `MAX_DEPTH`, before anything
    of it is written: a process's own are bounded as its arguments are; the host's were not
    (past Python's recursion limit: an untyped RecursionError; under it: stored where a
    deeper stack could not read them again)."""
    if not depth_within(value, MAX_DEPTH):
        raise InvalidArgument(f"{what} is nested too deep to store (more than {MAX_DEPTH} "
                              "levels)")


# No `default`: a value of no JSON type raises; keys sorted: keys of two types (which JSON
# writes as text, `{1: "a", "1": "b"}` read back as `{"1": "b"}`) raise too.
_EXACT_JSON = encoder(sort_keys=True)


def refuse_unplain(value: Any, what: str, *, text: bool = True) -> None:
    """`refuse_stored`, then `InvalidArgument` for a value the host hands in that JSON cannot
    keep as it is: a type JSON has none of (a set, an object: stored as its repr), keys of
    two types (or of none: a tuple) or not text (`{1: "a"}` is read back `{"1": "a"}`), and
    unless not `text`, text that is not Unicode (a lone surrogate; a planner's exit result
    shows it as U+FFFD instead). Else an untyped error left the store's write (a message, an
    event), or the broker kept another value than it answered (an exit result)."""
    refuse_stored(value, what)
    try:
        written = _EXACT_JSON(value)
        if text:
            written.encode()
        _text_keys(value)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidArgument(f"{what} is not plain JSON data the store can keep as it is "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _text_keys(value: Any) -> None:
    """TypeError for a key that is not text (keys all of one other type pass the sort: `{1:
    "a"}`, which JSON writes, and reads back, as `{"1": "a"}`). Iterative: `value` is
    within `MAX_DEPTH` already."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"a key of type {type(key).__name__} ({key!r:.40}) is "
                                    "written as text")
                if isinstance(child, dict | list | tuple):
                    stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(c for c in item if isinstance(c, dict | list | tuple))


def too_deep_result() -> InvalidArgument:
    return InvalidArgument(f"the result is nested too deep to store (more than {MAX_DEPTH} "
                           "levels)")


def check_depth(args: Any, text_size: int) -> None:
    """`RecursionError` if `args` (their canonical JSON `text_size` characters long) nest
    past `MAX_DEPTH`: walked only when long enough to (each level takes two characters)."""
    if text_size > 2 * MAX_DEPTH and not depth_within(args, MAX_DEPTH):
        raise RecursionError("nested past MAX_DEPTH")


def is_too_deep(action: CallTool) -> bool:
    """Whether a planner's action nests past `MAX_DEPTH` (measured without recursion), its
    step then refused before its checkpoint: checked at the checkpoint's encoding, a step
    whose checkpoint before it could be encoded and the one after it (a level deeper, from
    another stack) not, ended its process untyped."""
    return not depth_within(action.args, MAX_DEPTH)


def unkeyed(action: CallTool) -> TypeError | None:
    """The TypeError canonical JSON raises for a planner's action whose arguments hold keys
    it cannot keep (keys of two types, or of no JSON type: a tuple), else None."""
    try:
        args_hash(action.args)
    except TypeError as error:
        return error
    return None


def refused_step(store: Store, pid: int, step: int, action: CallTool,
                 charge: Callable[[], None],
                 error: RecursionError | TypeError | None = None) -> Observation:
    """A planner's step whose arguments its checkpoint could not encode: never run (nothing
    acts before its checkpoint), refused as the dispatcher refuses a call (a `rejected`
    `tool.call` record, the attempt charged to the process's syscalls budget by `charge`:
    the one that crosses it is recorded with its `LimitExceeded` instead, and raises); its
    observation holds their summary in their place, as every later checkpoint keeps it."""
    refusal, shown = unencodable(error or RecursionError(), action.args)
    call = {"name": action.name, "args": shown}
    try:
        charge()
    except LimitExceeded as exc:
        if not exc.detail.get("quiet"):
            _reject(store, pid, call, exc)
        raise
    _reject(store, pid, call, refusal)
    return Observation(step, CallTool(action.name, shown), error=refusal.to_wire())


def _reject(store: Store, pid: int, call: dict[str, Any], error: LibosError) -> None:
    store.append_audit(AuditRecord("rejected", "tool.call", pid, args_hash=args_hash(call),
                                   detail={"error": error.code, "message": error.message,
                                           "args": call}))
