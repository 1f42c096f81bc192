"""One guard for every JSON column a reader parses. Whoever writes the database (no key
needed) can put anything in a row: text that is not JSON, JSON of another type, JSON nested
past what Python's parser can take. Each reader names what it expected and gets either that
or `Unreadable`, a typed `Tampered`: recovery ends the one process whose row it is (recorded,
as for an image the chain refuses) and the open goes on; a read of that item alone is refused."""

from __future__ import annotations

import json
from typing import Any

from broker.store.vouch import Tampered

MAX_WHAT = 120


class Unreadable(Tampered):
    """A stored JSON column edited into something its reader cannot take."""


def read_json(text: Any, what: str, kind: type | tuple[type, ...] | None = dict) -> Any:
    """`text` parsed, as `kind` (None: any JSON value); `Unreadable` naming `what` otherwise."""
    try:
        value = json.loads(text)
    except RecursionError:
        problem = "nested too deep"
    except (TypeError, ValueError):
        problem = "not JSON"
    else:
        if kind is None or isinstance(value, kind):
            return value
        problem = f"not {_names(kind)}"
    raise Unreadable(f"{what[:MAX_WHAT]} cannot be read back ({problem}): edited in the"
                     " database")


def read_json_or_none(text: Any, what: str, kind: type | tuple[type, ...] | None = dict
                      ) -> Any:
    """`read_json` of a column that may be NULL."""
    return None if text is None else read_json(text, what, kind)


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({dict: "an object", list: "an array", str: "a string"}.get(k, k.__name__)
                       for k in kinds)
