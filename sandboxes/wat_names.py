"""Whether a WAT text names the module's items only by `$name` (an allow-list over its tokens).

A WAT tool's text is compiled in more than one form: with the whole guest library spliced in,
with part of it (`wasm_guest.prelude_for`), or alone, importing from the library module
(`wasm_guest.link`). Functions, globals, types and data segments are numbered differently in
each, so the same text means the same module in all of them only if it never counts on an
index. `names_only` lexes the text as wat2wasm does (comments, strings, parentheses, runs of
identifier characters) and allows a number only where it cannot be an index into a module's
index space; anything else, and anything it does not recognise, answers False (the caller then
splices the whole library in and does not link: the safe path).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Comments and strings first (a line comment ends at a LF or a CR, as wat2wasm; a string may
# hold no control character: wat2wasm refuses one, and refusing it here too keeps the two
# lexers in step), then the rest is split into parentheses, strings and words.
_SPECIAL = re.compile(r'"|;;|\(;')
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"')
_LINE_END = re.compile(r"[\n\r]")
_BLOCK_EDGE = re.compile(r"\(;|;\)")
_IDCHARS = "0-9A-Za-z!#$%&'*+\\-./:<=>?@\\\\^_`|~"
_IDCHAR = re.compile(f"[{_IDCHARS}]")
_OUTSIDE_WAT = re.compile(f'[^ \\t\\n\\r()"{_IDCHARS}]')
_TOKENS = re.compile(f'[()]|""|[{_IDCHARS}]+')
_FLOAT_WORD = re.compile(r"(?:inf|nan(?::0x[0-9A-Fa-f_]+)?)\Z")
_NUMBER_START = frozenset("0123456789+-")

# A number right after one of these is that instruction's only immediate: a constant, or a
# local (params and locals are per function) or a label depth (per function too).
_IMMEDIATE_OF = frozenset({"i32.const", "i64.const", "f32.const", "f64.const",
                           "local.get", "local.set", "local.tee", "br", "br_if"})
# Numbers directly inside these forms are limits (pages, elements), when the form defines a
# memory or a table (at the top level, or in an import), not when it refers to one by index.
_LIMITS_OF = frozenset({"memory", "table"})
_DEFINES_AT = frozenset({None, "module", "import"})
# Forms refused outright: an element segment may list functions by index without any
# instruction before them (the legacy `(elem (i32.const 0) 3)`).
_REFUSED_FORMS = frozenset({"elem"})


def _skip_block(text: str, i: int) -> int | None:
    """The end of the block comment opened just before `i` (they nest), None if unclosed."""
    nest = 1
    while nest:
        edge = _BLOCK_EDGE.search(text, i)
        if edge is None:
            return None
        nest += 1 if edge.group() == "(;" else -1
        i = edge.end()
    return i


def _tokens(text: str) -> list[str] | None:
    """`text`'s tokens, comments dropped and each string as `""`; None if it is not WAT this
    lexer follows (an unclosed comment or string, a string glued to a word as in `$"name"`,
    a character outside WAT's tokens)."""
    out, i, n = [], 0, len(text)
    while (found := _SPECIAL.search(text, i)) is not None:
        out.append(text[i:found.start()])
        if found.group() == '"':
            string = _STRING.match(text, found.start())
            if string is None or (found.start() and _IDCHAR.match(text, found.start() - 1)):
                return None
            out.append(' "" ')
            i = string.end()
        elif found.group() == ";;":
            eol = _LINE_END.search(text, found.end())
            i = n if eol is None else eol.start()
            out.append(" ")
        else:
            end = _skip_block(text, found.end())
            if end is None:
                return None
            i = end
            out.append(" ")
    out.append(text[i:])
    bare = "".join(out)
    return None if _OUTSIDE_WAT.search(bare) else _TOKENS.findall(bare)


@lru_cache(maxsize=4)  # `expand` and `link` ask about the same text
def names_only(text: str) -> bool:
    """True if every number in `text` stands where it cannot be a module-level index, and the
    text holds nothing this lexer does not recognise (an annotation `(@...)`, an identifier
    written as a string `$"..."`, a character outside WAT's tokens, an unclosed comment)."""
    tokens = _tokens(text)
    if tokens is None:
        return False
    heads: list[str | None] = []  # the keyword opening each enclosing form (None: no keyword)
    previous, in_br_table, opened = "", False, False
    for word in tokens:
        first, head_next, opened = word[0], opened, False
        is_label = False
        if first == "(":
            heads.append(None)
            opened = True
        elif first == ")":
            if not heads:
                return False
            heads.pop()
        elif first in _NUMBER_START or (first in "in" and _FLOAT_WORD.match(word)):
            if not (previous in _IMMEDIATE_OF or in_br_table or (
                    heads and heads[-1] in _LIMITS_OF and not head_next
                    and (heads[-2] if len(heads) > 1 else None) in _DEFINES_AT)):
                return False
            is_label = first != "i" and first != "n"
        elif first == "$":
            if len(word) == 1:
                return False
            is_label = True
        elif "a" <= first <= "z":
            if head_next:
                if word in _REFUSED_FORMS:
                    return False
                heads[-1] = word
        elif first != '"':  # a reserved word (an annotation `@x`, capitals, punctuation)
            return False
        in_br_table = word == "br_table" or (in_br_table and is_label)
        previous = word
    return not heads
