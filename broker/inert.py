"""One rendering rule for every string a process controls, on every surface a person reads.

A tool, a model, an MCP client or a file can put terminal escapes (CSI, OSC 8 links, OSC 52
clipboard writes), bidi overrides, invisible characters or line separators into text that a
person will read, to steer their terminal or to forge what a screen says. `shown` turns each
such character into a visible escape in JSON's notation (`\\u001b`, `\\n`, `\\u2028`) and
leaves every other character as it is:

* the Unicode categories Cc (controls), Cf (format: bidi controls, zero-width characters, the
  BOM), Zl and Zp (line and paragraph separators), Cs (lone surrogates) and Cn (unassigned
  in this Python's Unicode tables, so a format character of a later version is escaped too);
* the few other characters that draw nothing at all (Hangul fillers, variation selectors).

Values that are not text are shown as JSON. Nothing is cut unless a caller asks for a
summary (`limit` characters, for transcripts and record tables, never for an approval); a
cut keeps escapes whole and is marked with "…". The CLI's tables, the approvals page, the
MCP elicitation forms and the run transcripts all use this module; the same test corpus is
run against each of them.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
# Default-ignorable characters outside those categories: they draw nothing.
_INVISIBLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f"
                        "\uffa0\U000e0100-\U000e01ef]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
CUT = "…"


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _needs_escape(char: str) -> bool:
    if char.isprintable():
        return bool(_INVISIBLE.match(char))
    return unicodedata.category(char) in ESCAPED_CATEGORIES


def shown(value: Any, limit: int | None = None) -> str:
    """`value` as a person may see it: text as it is, anything else as JSON, with every
    control, format, separator and invisible character escaped. With `limit`, a summary of at
    most that many characters, whole escapes only, ending with "…" where it was cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=repr)
    if limit is None:
        return _escaped(text)
    head = _escaped(text[:limit])  # a raw character never shows as less than one
    if len(text) <= limit and len(head) <= limit:
        return head
    pieces, used = [], 0
    for char in text[:limit]:
        piece = _escape(char) if _needs_escape(char) else char
        if used + len(piece) > limit - 1:
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + CUT


class _Escapes(dict[int, "int | str"]):
    """`str.translate`'s table, filled in as code points are met: each maps to itself or to
    its escape, so a long text costs one lookup per character in C."""

    def __missing__(self, code: int) -> int | str:
        char = chr(code)
        value: int | str = _escape(char) if _needs_escape(char) else code
        if len(self) < 1 << 16:  # bounded: text made of every code point cannot grow it
            self[code] = value
        return value


_ESCAPES = _Escapes()


def _escaped(text: str) -> str:
    if text.isprintable() and not _INVISIBLE.search(text):
        return text
    return text.translate(_ESCAPES)


def shown_lines(text: str) -> str:
    """Text whose line breaks are its own layout (a tool's description): each line shown by
    the rule, the `\\n` between them kept. Every other separator is still escaped."""
    return "\n".join(shown(line) for line in text.split("\n"))


def shown_json(value: Any, *, indent: int | None = None) -> str:
    """`value` as JSON, whole, for a person: with `indent`, one key per line (those line
    breaks are the layout's own; every character inside a string is escaped by the rule)."""
    text = json.dumps(value, ensure_ascii=False, indent=indent, default=repr)
    # JSON escapes every newline inside a string, so the only raw ones are the layout's.
    return shown_lines(text)


_PROSE = frozenset({"title", "description"})


def shown_schema(value: Any, key: str | None = None) -> Any:
    """A JSON Schema for a client to show people (its form labels, options, descriptions):
    every string in it, names included, by the rule; titles and descriptions keep their own
    line breaks. A name or option that had to be escaped matches nothing a client sends
    back, so a hostile one is shown but never works; a plain schema is unchanged."""
    if isinstance(value, dict):
        return {shown(k): shown_schema(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shown_schema(v) for v in value]
    if isinstance(value, str):
        return shown_lines(value) if key in _PROSE else shown(value)
    return value

