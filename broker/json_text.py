"""JSON text as `json.JSONEncoder(...).encode` writes it, from an encoder built once.

`JSONEncoder.encode` builds a C encoder (`c_make_encoder`) for every call, with a fresh dict
to find cycles in: about a third of what writing a small audit detail costs, and every record
and every `args_hash` writes one. `encoder` builds the C encoder once, without that dict;
a value the C encoder cannot finish that way (a cycle: it recurses until `RecursionError`)
is written again by the standard encoder, which raises what it always raised (`ValueError`
for a cycle, `RecursionError` for nesting too deep). The text is the same byte for byte
(pinned in tests/broker/store/test_json_text.py).
"""

from __future__ import annotations

import json
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
    # The arguments `JSONEncoder.iterencode` gives it, but no markers (a dict per call).
    fast = _make_c_encoder(None, standard.default, json.encoder.encode_basestring, None,
                           ":", ",", sort_keys, False, allow_nan)
    string = json.encoder.encode_basestring
    join = "".join

    def encode(value: Any) -> str:
        if type(value) is str:
            return string(value)  # (as `JSONEncoder.encode` does)
        try:
            return join(fast(value, 0))
        except RecursionError:
            return standard.encode(value)  # a cycle, or too deep: raised as ever

    return encode
