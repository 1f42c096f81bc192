"""Bounds on what a model writes: no reply, however large, deep or badly encoded, can end a
process or grow its conversation past its limits.

A tool call's arguments are vetted when the reply arrives: bigger than the argument limit,
nested deeper than `MAX_ARGUMENT_DEPTH`, not JSON, or not encodable as UTF-8 (a lone
surrogate), they are refused with `InvalidArgument`, which goes back to the model as that
call's result. Text is cut and made encodable.
"""

from __future__ import annotations

import json
from typing import Any

from broker.errors import InvalidArgument
from broker.json_text import depth_within

MAX_ARGUMENT_DEPTH = 64  # arrays and objects inside one another
MAX_NAME_CHARS = 256  # a tool call's id or name
DEFAULT_MAX_CALLS = 32  # tool calls in one reply
DEFAULT_MAX_ARGUMENT_CHARS = 100_000  # one call's arguments, as JSON text


def clean_text(text: str) -> str:
    """Text that encodes as UTF-8 (lone surrogates become U+FFFD)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def cut(text: str, limit: int, dropped: int = 0) -> str:
    """`text` cut to `limit` characters, saying how long it was (at least, when `dropped`
    characters or items were left out before it was made)."""
    if len(text) <= limit:
        return text
    total = f"at least {len(text) + dropped}" if dropped else str(len(text))
    note = f"... [cut: {total} characters in all]"
    return text[: max(0, limit - len(note))] + note


def parse_arguments(raw: Any, max_chars: int = DEFAULT_MAX_ARGUMENT_CHARS) -> dict[str, Any]:
    """A tool call's arguments (a JSON string, or an object an SDK already parsed) as an
    object, or `InvalidArgument` for size, nesting, encoding or syntax."""
    if isinstance(raw, str):
        if len(raw) > max_chars:
            raise InvalidArgument(f"tool arguments of {len(raw)} characters exceed the limit "
                                  f"of {max_chars}")
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except RecursionError:
            raise InvalidArgument("tool arguments are nested too deeply") from None
        except ValueError as exc:
            raise InvalidArgument(f"tool arguments are not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("tool arguments must be a JSON object")
    if not depth_within(raw, MAX_ARGUMENT_DEPTH):
        raise InvalidArgument(f"tool arguments are nested more than {MAX_ARGUMENT_DEPTH} deep")
    try:
        size = len(json.dumps(raw, ensure_ascii=False).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument("tool arguments are not valid UTF-8 text") from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"tool arguments are not plain JSON: {exc}") from None
    if size > max_chars:
        raise InvalidArgument(f"tool arguments of {size} bytes exceed the limit of {max_chars}")
    return raw


def arguments_size(raw: Any) -> int:
    """The characters a call's arguments take in the conversation (vetted arguments only)."""
    return len(raw) if isinstance(raw, str) else len(json.dumps(raw, ensure_ascii=False))
