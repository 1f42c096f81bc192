"""Helpers for writing WebAssembly tools by hand in WAT.

`wasm-tools/lib.wat` is a small guest library: the ABI's imports and exports, a bump
allocator, a msgpack writer and reader for small values, and syscall/result helpers. A WAT
tool uses it by writing the marker `(;libos:prelude;)` directly after `(module`; the broker
expands the marker when the tool is registered (it is a block comment, so the text is valid
WAT either way). From Python, `module(body)` wraps a body in a module with the prelude.

Only the library functions a tool reaches are spliced in (`prelude_for`): its exports, and
every function named in the tool's text, with what those call. Compiling the rest for every
tool was most of a WAT tool's registration. A tool whose text may name anything by index (a
number anywhere `wat_names` does not know to be something else) gets the whole library, whose
indices it may count on, and is not linked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import cache, lru_cache

from broker.assets import asset_dir
from sandboxes.wat_names import names_only

MARKER = "(;libos:prelude;)"
# The marker counts only directly after the text's own `(module` (and an optional module
# name), with nothing but blanks and comments before it: one inside a comment would end the
# comment where the library is spliced in (a newline), bringing what followed it to life.
_MARKER_AT = re.compile(r"(?:\s|;;[^\n\r]*+|\(;(?:(?!\(;|;\)).)*+;\))*+"  # possessive: no ReDoS
                        r"(\(module(?:\s+\$[^\s()]+)?\s*)\(;libos:prelude;\)", re.S)
LIB_PATH = asset_dir("wasm-tools") / "lib.wat"
EXAMPLES = LIB_PATH.parent / "examples"


@cache
def prelude() -> str:
    """The guest library's text (module fields, to splice inside `(module ...)`)."""
    return LIB_PATH.read_text(encoding="utf-8")


_NAME = re.compile(r"\$[0-9A-Za-z!#$%&'*+\-./:<=>?@\\^_`|~]+")


def _fields(text: str) -> list[str]:
    """The top-level forms of module-field text (comments between them dropped)."""
    fields, depth, start, i, n = [], 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # a string: skip to its end (a backslash escapes the next character)
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text.startswith(";;", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("(;", i):
            end, nest = i + 2, 1
            while nest and end < n:
                nest += text.startswith("(;", end) - text.startswith(";)", end)
                end += 2 if text.startswith(("(;", ";)"), end) else 1
            i = end - 1
        elif c == "(":
            if depth == 0:
                start = i
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                fields.append(text[start:i + 1])
        i += 1
    return fields


@cache
def _library() -> tuple[tuple[str, ...], dict[str, tuple[str, frozenset[str]]]]:
    """The library's fields other than functions, and its functions by name (each with the
    names it mentions)."""
    others: list[str] = []
    funcs: dict[str, tuple[str, frozenset[str]]] = {}
    for field in _fields(prelude()):
        named = re.match(r"\(\s*func\s+(\$\S+)", field)
        if named:
            funcs[named.group(1)] = (field, frozenset(_NAME.findall(field)))
        else:
            others.append(field)
    return tuple(others), funcs


def prelude_for(tool_text: str) -> str:
    """The guest library as spliced into `tool_text`: only the functions it reaches, if the
    tool names every item by name (`wat_names.names_only`), else the whole library."""
    if not names_only(tool_text):
        return prelude()
    funcs = _library()[1]
    return _reached(frozenset(name for name in _NAME.findall(tool_text) if name in funcs))


@lru_cache(maxsize=64)  # tools name few sets of library functions; each text is < 24 KB
def _reached(named: frozenset[str]) -> str:
    """The library's text with only its exports, the functions `named` and what they call."""
    others, funcs = _library()
    wanted = [name for name, (field, _) in funcs.items() if "(export" in field]
    wanted += named
    kept: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name not in kept:
            kept.add(name)
            wanted.extend(n for n in funcs[name][1] if n in funcs)
    return "\n".join([*others, *(field for name, (field, _) in funcs.items() if name in kept)])


def expand(text: str) -> str:
    """Replace the prelude marker that directly follows `(module` with the guest library (the
    part of it the module reaches); text without one is returned as it is."""
    found = _MARKER_AT.match(text)
    if found is None:
        return text
    rest = text[:found.start(1)] + found.group(1) + text[found.end():]  # the marker gone
    return f"{text[:found.start(1)]}{found.group(1)}\n{prelude_for(rest)}\n{text[found.end():]}"


# -- the library as a module of its own, linked into each call's store ----------------------

_IMPORTED_FUNC = re.compile(r'\(\s*import\s+"[^"]*"\s+"[^"]*"\s*\(\s*func\s+(\$\S+)')
_GLOBAL = re.compile(r"\(\s*global\s+(\$\S+)")


@cache
def _library_globals() -> tuple[str, ...]:
    return tuple(m.group(1) for f in _library()[0] if (m := _GLOBAL.match(f)))


@cache
def library_names() -> tuple[str, ...]:
    """The library's named functions (its imports of the host functions too) and globals, each
    of which the library module exports under its name without the `$`."""
    others, funcs = _library()
    imported = [m.group(1) for f in others if (m := _IMPORTED_FUNC.match(f))]
    return (*imported, *_library_globals(), *funcs)


@cache
def library_text() -> str:
    """The whole guest library as a module: its memory and `alloc` exported as the ABI says,
    every other named function and global under its name without the `$`."""
    _, funcs = _library()
    exports = []
    for name in library_names():
        if f'(export "{name[1:]}")' in (funcs[name][0] if name in funcs else ""):
            continue  # exported under that name by the library itself (alloc)
        kind = "global" if name in _library_globals() else "func"
        exports.append(f'(export "{name[1:]}" ({kind} {name}))')
    return "(module\n{}\n{}\n)\n".format(prelude(), "\n".join(exports))


@cache
def library_module_name() -> str:
    """The import module a linked tool names: the library's content hash is part of it, so a
    tool linked against one version of the library is never run against another."""
    return "libos:lib@" + hashlib.sha256(library_text().encode()).hexdigest()[:16]


def link(text: str, imports: Mapping[str, str]) -> str | None:
    """`text` with its prelude marker replaced by imports from the library module (`imports`
    maps a library name, and `memory`, to its import field) of what the tool's text names,
    `memory` re-exported as the ABI wants (the host calls the library's `alloc`); None if it
    has no marker, or may name anything by index (`wat_names.names_only`: it gets the whole
    library spliced in)."""
    found = _MARKER_AT.match(text)
    if found is None:
        return None
    rest = text[:found.start(1)] + found.group(1) + text[found.end():]  # the marker gone
    if not names_only(rest):
        return None
    named = set(_NAME.findall(rest))
    # (not `alloc`, unless the tool names it: the host calls the library's)
    fields = [imports["memory"], *(imports[n] for n in library_names() if n in named),
              '(export "memory" (memory 0))']
    return f"{text[:found.start(1)]}{found.group(1)}\n{chr(10).join(fields)}\n{text[found.end():]}"


def module(body: str) -> str:
    """A whole module: the guest library (the part `body` reaches), then `body` (functions,
    data, globals). It assembles and compiles on its own (a binary tool, raw wasmtime)."""
    return f"(module\n{prelude_for(body)}\n{body}\n)\n"


def tool(body: str) -> str:
    """A WAT tool as a person writes one: the prelude marker, then `body`. Registered, it is
    linked with the guest library module; `expand` makes it a whole module."""
    return f"(module {MARKER}\n{body}\n)\n"


def example(name: str) -> str:
    """The text of `wasm-tools/examples/<name>.wat`."""
    return (EXAMPLES / f"{name}.wat").read_text(encoding="utf-8")
