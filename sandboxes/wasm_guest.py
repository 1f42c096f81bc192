"""Helpers for writing WebAssembly tools by hand in WAT.

`wasm-tools/lib.wat` is a small guest library: the ABI's imports and exports, a bump
allocator, a msgpack writer and reader for small values, and syscall/result helpers. A WAT
tool uses it by writing the marker `(;libos:prelude;)` directly after `(module`; the broker
expands the marker when the tool is registered (it is a block comment, so the text is valid
WAT either way). From Python, `module(body)` wraps a body in a module with the prelude.
"""

from __future__ import annotations

import re
from functools import cache

from broker.assets import asset_dir

MARKER = "(;libos:prelude;)"
# The marker counts only directly after `(module` (and an optional module name).
_MARKER_AT = re.compile(r"(\(module(?:\s+\$[^\s()]+)?\s*)\(;libos:prelude;\)")
LIB_PATH = asset_dir("wasm-tools") / "lib.wat"
EXAMPLES = LIB_PATH.parent / "examples"


@cache
def prelude() -> str:
    """The guest library's text (module fields, to splice inside `(module ...)`)."""
    return LIB_PATH.read_text(encoding="utf-8")


def expand(text: str) -> str:
    """Replace the prelude marker that directly follows `(module` with the guest library;
    text without one is returned as it is."""
    return _MARKER_AT.sub(lambda m: m.group(1) + "\n" + prelude() + "\n", text, count=1)


def module(body: str) -> str:
    """A whole module: the guest library, then `body` (functions, data, globals)."""
    return f"(module\n{prelude()}\n{body}\n)\n"


def example(name: str) -> str:
    """The text of `wasm-tools/examples/<name>.wat`."""
    return (EXAMPLES / f"{name}.wat").read_text(encoding="utf-8")
