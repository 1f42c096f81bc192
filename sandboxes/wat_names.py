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

# One token at a time. A line comment ends at a LF or a CR (as wat2wasm); a string may hold no
# control character (wat2wasm refuses one; refusing it here too keeps the two lexers in step).
_TOKEN = re.compile(r"""
    (?P<space>[ \t\n\r]+)
  | (?P<line>;;[^\n\r]*)
  | (?P<block>\(;)
  | (?P<string>"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*")
  | (?P<open>\()
  | (?P<close>\))
  | (?P<word>[0-9A-Za-z!#$%&'*+\-./:<=>?@\\^_`|~]+)
""", re.X)
_BLOCK_EDGE = re.compile(r"\(;|;\)")
_FLOAT_WORD = re.compile(r"(?:inf|nan(?::0x[0-9A-Fa-f_]+)?)\Z")

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


def names_only(text: str) -> bool:
    """True if every number in `text` stands where it cannot be a module-level index, and the
    text holds nothing this lexer does not recognise (an annotation `(@...)`, an identifier
    written as a string `$"..."`, a character outside WAT's tokens, an unclosed comment)."""
    heads: list[str | None] = []  # the keyword opening each enclosing form (None: no keyword)
    previous, in_br_table, opened, i, word_end = "", False, False, 0, -1
    while i < len(text):
        token = _TOKEN.match(text, i)
        if token is None:
            return False
        kind, word, start, i = token.lastgroup, token.group(), token.start(), token.end()
        if kind in ("space", "line"):
            continue
        if kind == "block":
            end = _skip_block(text, i)
            if end is None:
                return False
            i = end
            continue
        if kind == "string" and start == word_end:
            return False  # glued to a word: `$"name"` is an identifier, `(@"x"` an annotation
        head_next, opened = opened, False
        if kind == "open":
            heads.append(None)
            opened = True
        elif kind == "close":
            if not heads:
                return False
            heads.pop()
        elif kind == "word":
            if word[0] in "0123456789+-" or _FLOAT_WORD.match(word):
                if not (previous in _IMMEDIATE_OF or in_br_table or (
                        heads and heads[-1] in _LIMITS_OF and not head_next
                        and (heads[-2] if len(heads) > 1 else None) in _DEFINES_AT)):
                    return False
            elif word[0] == "$":
                if len(word) == 1:
                    return False
            elif "a" <= word[0] <= "z":
                if head_next:
                    if word in _REFUSED_FORMS:
                        return False
                    heads[-1] = word
            else:  # a reserved word (an annotation `@x`, capitals, punctuation)
                return False
            word_end = i
        is_label = kind == "word" and (word[0] == "$" or word[0] in "0123456789+-")
        in_br_table = (word == "br_table") or (in_br_table and is_label)
        previous = word
    return not heads
