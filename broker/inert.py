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

Where a person reads columns told apart by spaces alone (`libos ps` past 200 rows:
`broker.render_long`), `shown_cell` shows a cell whose text could pass for a column's edge
(a run of blanks, a blank at either end, a blank other than a plain space, or an opening
quote) as a JSON string literal, the rule applied inside: one cell, however it is spaced.
"""

from __future__ import annotations

import json
import re
import shlex
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


def pasted(value: Any) -> str:
    """`value` as one word of a command line a person copies into their shell (`shown`, then
    quoted where the shell would read anything of it: a request id is a database writer's
    text, and `$(...)` in it ran in the shell of the person who pasted the line: red team 38).
    An id so quoted that `shown` escaped names no request: the answer is refused, not run."""
    return shlex.quote(shown(value))


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


# What could pass for the space between two columns: whitespace other than a plain space
# (NBSP, an em or ideographic space: Python's `\s`), a braille blank, a run of spaces or one
# at an end; and a cell that opens with a quote, which could pass for a quoted one.
_COLUMN_EDGE = re.compile("[^\\S ]|\u2800| {2}|^ | $|^\"")


def shown_cell(value: Any, limit: int | None = None) -> str:
    """`value` as one cell of a table whose columns only spaces tell apart: as `shown` shows
    it, or, where that text could pass for a column's edge (`_COLUMN_EDGE`), quoted as a JSON
    string (quotes and backslashes escaped; the rule's escapes are JSON's, but for `\\U`
    past the Basic Multilingual Plane) whose only blanks are lone spaces (a space in a run or
    at an end is `\\u0020`: no terminal's wrapping of a long run starts a line that looks
    like a row). A cut (`limit` characters inside the quotes) keeps escapes whole and ends
    with "…" inside."""
    text = "" if value is None else shown(value, limit)
    if not _COLUMN_EDGE.search(text):
        return text
    return _quoted_cell(value, limit, lone_spaces=True)


def _quoted_cell(value: Any, limit: int | None, *, lone_spaces: bool) -> str:
    """`value` quoted as a JSON string, the rule's escapes inside (a lone space as itself
    only with `lone_spaces`), cut past `limit` characters inside the quotes."""
    raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                          default=repr)
    pieces, used = [], 0
    for n in range(len(raw)):
        piece = _quoted(raw, n, lone_spaces)
        room = limit if limit is None or n == len(raw) - 1 else limit - 1
        if room is not None and used + len(piece) > room:
            pieces.append(CUT)
            break
        pieces.append(piece)
        used += len(piece)
    return '"' + "".join(pieces) + '"'


def _quoted(raw: str, n: int, lone_spaces: bool = True) -> str:
    """`raw[n]` inside a quoted cell: JSON's escape, or the rule's, or itself."""
    char = raw[n]
    if char == " ":
        lone = lone_spaces and 0 < n < len(raw) - 1 and raw[n - 1] != " " and raw[
            n + 1] != " "
        return " " if lone else "\\u0020"
    if char in '"\\':
        return "\\" + char
    if _needs_escape(char) or char.isspace() or char == "\u2800":
        return _escape(char)
    return char


# Plain words a reason is made of (`exit 0`, `killed by operator`): no tree guide (`├──`,
# `|`, `+--`, a backquote) among them, nor a character that could pass for one.
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9 .,:;_/()'#=@!?%-]*")


def shown_field(value: Any, limit: int | None = None, *, prose: bool = False) -> str:
    """`value` as one field of a line whose fields one space tells apart (`libos ps`'s
    tree), a line the terminal may wrap anywhere: as `shown` shows it where it has no blank
    (nor opens with a quote), or, with `prose`, where it is plain ASCII words (a reason);
    else quoted as `shown_cell` quotes but with no blank at all (every space `\\u0020`):
    neither its spaces nor, wrapped, its tail can pass for another field or a node."""
    text = "" if value is None else shown(value, limit)
    if not _COLUMN_EDGE.search(text) and (
            " " not in text or (prose and _PLAIN_WORDS.fullmatch(text))):
        return text
    return _quoted_cell(value, limit, lone_spaces=False)


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

