"""JSON text as `json.JSONEncoder(...).encode` writes it, from an encoder built once.

`JSONEncoder.encode` builds a C encoder (`c_make_encoder`) for every call, with a fresh dict
to find cycles in: about a third of what writing a small audit detail costs, and every record
and every `args_hash` writes one. `encoder` builds the C encoder once per thread, with one
dict of cycle markers it keeps (empty again after each value). Without markers a cycle was
found only at the recursion limit, after the value's own code (a dict subclass's `items`)
ran about a thousand times, each turn costing the whole container (a 100k-item list holding
itself: 30 s with the chain's lock held). The text is the same byte for byte, and so is what
it raises (pinned in tests/broker/store/test_json_text.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

try:
    from _json import make_encoder as _make_c_encoder  # CPython's C accelerator
except ImportError:  # another interpreter: the standard encoder alone
    _make_c_encoder = None


def encoder(*, sort_keys: bool = False, default: Callable[[Any], Any] | None = None,
            allow_nan: bool = True) -> Callable[[Any], str]:
    """`json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys,
    default=default, allow_nan=allow_nan).encode`, built once."""
    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                sort_keys=sort_keys, default=default, allow_nan=allow_nan)
    if _make_c_encoder is None:
        return standard.encode
    string = json.encoder.encode_basestring
    join = "".join
    # Markers are per thread: two threads writing one shared value at once would each take
    # the other's marks for a cycle.
    per_thread = threading.local()

    def encode(value: Any) -> str:
        if type(value) is str:
            return string(value)  # (as `JSONEncoder.encode` does)
        try:
            fast, markers = per_thread.made
        except AttributeError:
            markers = {}
            # The arguments `JSONEncoder.iterencode` gives it.
            fast = _make_c_encoder(markers, standard.default, string, None, ":", ",",
                                   sort_keys, False, allow_nan)
            per_thread.made = fast, markers
        if markers:  # called again from inside a value's own code (`default`, `items`)
            return standard.encode(value)
        try:
            return join(fast(value, 0))
        except BaseException:
            markers.clear()  # what an error cut off leaves marked
            raise

    return encode


class TooDeepAnswer:
    """A typed answer whose JSON nests too deep to read. It goes to the answer check as any
    answer does, which refuses it (`approvals.rules.check_answer`): the refusal is then on
    the record like every refused answer, whichever front end took it."""

    __slots__ = ()


def utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8: JSON's "\\ud800" reads as a lone surrogate, which no
    store, and no reply, can carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def answer_value(text: str) -> Any:
    """What a person's typed answer holds (the CLI, the web page): its JSON, or the text
    itself when it is not JSON. JSON nested too deep to read is a `TooDeepAnswer`, never
    taken as text."""
    try:
        return json.loads(text)
    except RecursionError:
        return TooDeepAnswer()
    except ValueError:
        return text


# What the broker stores at most (a call's arguments, a person's answer): far under Python's
# recursion limit, whatever stack reads it again (`libos audit --verify`).
MAX_STORED_DEPTH = 512


_CONTAINERS = (dict, list, tuple)


def depth_within(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays and objects at most `limit` deep (iteratively: a value
    too deep for Python's recursion is measured too; depth first: a value holding itself is
    found too deep after `limit` steps). Only containers are stacked: a leaf costs one type
    check."""
    stack = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    push = stack.append
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        depth += 1
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                push((child, depth))
    return True
