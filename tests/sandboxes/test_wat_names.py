"""The allow-list that decides whether a WAT tool is linked with the guest library and given
only the part of it that it reaches (`sandboxes/wat_names.py`).

A number anywhere it could be an index into a module-level index space (functions, globals,
types, data or element segments, tables, memories), however it is written or hidden, must
give the safe path: not linked, the whole library spliced in. The allow-listed forms must
still be linked and trimmed, and run alike linked and whole (real kernel, real Wasmtime).
"""

from __future__ import annotations

import threading

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import Kernel
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from sandboxes.wat_names import names_only
from tests.sandboxes.test_wasm import cache_dir, register, start, wasm, wk  # noqa: F401

IMPORTS = {"memory": "", **{n: "" for n in wasm_guest.library_names()}}

# Every allow-listed use of a number, in a tool that runs: constants of the four kinds,
# locals by index, label depths, memargs, data offsets. It returns 42.
ALLOWED_FIELDS = ['(data (i32.const 1024) "x")', """
  (func $pick (param i32) (result i32)
    (local i32)
    (local.set 1 (i32.const 40))
    (block $out (block (block
      (br_table 0 1 $out (local.get 0)))
      (local.set 1 (i32.add (local.tee 1 (local.get 1)) (i32.const 1))))
      (br_if 0 (i32.eqz (i32.const 1))))
    (local.get 1))""", """
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (drop (f32.const -inf)) (drop (f64.const nan:0x1)) (drop (i64.const 0x1_0000))
    (i32.store8 offset=1 align=1 (i32.const 2047) (i32.const 1))
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u (i32.add (call $pick (i32.const 0))
                                             (i32.load8_u offset=1 (i32.const 2047)))))
    (call $ret_end))"""]
ALLOWED = "\n".join(ALLOWED_FIELDS)

# A number where it may be an index (one of these is not on the allow-list at all).
HOSTILE = [
    "(func (call {n}))", "(func return_call {n})", "(func (result funcref) (ref.func {n}))",
    "(func (drop (global.get {n})))", "(func (global.set {n} (i32.const 0)))",
    "(func (memory.init {n} (i32.const 0) (i32.const 0) (i32.const 0)))",
    "(func (data.drop {n}))", "(func (type {n}))",
    "(func (call_indirect (type {n}) (i32.const 0)))", "(start {n})",
    '(export "f" (func {n}))', '(export "m" (memory {n}))', "(func (drop (table.size {n})))",
    "(func (drop (i32.load {n} (i32.const 0))))", "(func (drop (memory.size {n})))",
    "(data (memory {n}) (i32.const 0))", "(func (drop (v128.const i32x4 {n} 0 0 0)))",
    "(func (drop (i32.const 0 {n})))", "(func (param $x i32) (drop (local.get $x {n})))",
    "(func (block (br_table 0 call {n})))", "(func (drop (ref.null {n})))",
    "(func (table.init {n} (i32.const 0) (i32.const 0) (i32.const 0)))",
    "(func (elem.drop {n}))", "(func (drop (i32.const 0)) {n})",
]
NUMBERS = ["3", "+3", "0x3", "0_3", "0"]
# What may stand between an instruction and its operand, for wat2wasm
GAPS = [" ", "\t", "\n", "\r", " (;c;) ", "(; (; nested ;) ;)", " ;; c\n", " ;; c\r", ";;\r\n"]


def decisions(body: str) -> tuple[bool, bool]:
    """(linked, trimmed) for a tool with this body."""
    text = wasm_guest.tool(body)
    return (wasm_guest.link(text, IMPORTS) is not None,
            wasm_guest.prelude() not in wasm_guest.expand(text))


@pytest.mark.parametrize("template", HOSTILE)
@pytest.mark.parametrize("number", NUMBERS)
def test_a_number_where_it_may_be_an_index_disables_linking_and_trimming(
        template: str, number: str) -> None:
    assert decisions(template.format(n=number)) == (False, False)
    # the neighbour: the same form by name (where it has one) is linked and trimmed
    if "{n})" in template and not any(k in template for k in ("type", "memory", "table", "i32.load",
                                                             "ref.null", "v128", "local.get")):
        assert decisions(template.format(n="$ret_begin")) == (True, True), template


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from(HOSTILE), number=st.sampled_from(NUMBERS),
       gap=st.lists(st.sampled_from(GAPS), min_size=1, max_size=3).map("".join),
       where=st.integers(min_value=0, max_value=len(ALLOWED_FIELDS)))
def test_a_hidden_index_anywhere_in_a_linked_tool_disables_both(
        template: str, number: str, gap: str, where: int) -> None:
    """A hostile field, its number behind any gap wat2wasm skips, put among the fields of a
    tool that is linked: the tool is neither linked nor trimmed."""
    field = template.format(n=gap + number)
    at = where % (len(ALLOWED_FIELDS) + 1)
    body = "\n".join([*ALLOWED_FIELDS[:at], field, *ALLOWED_FIELDS[at:]])
    assert decisions(body) == (False, False)


@pytest.mark.parametrize("body", [
    "(func (memory.init (@x) 1 (i32.const 0) (i32.const 0) (i32.const 0)))",  # annotation
    "(@custom \"x\") (func)", '(func (call $"ret_begin"))',  # an identifier as a string
    "(func (drop (i32.const 1))) \x0c", "(func (drop (i32.const 1)))\u00a0",  # not WAT
    "(func (drop (i32.const 1)) (; unclosed", "(func) )", '(data (i32.const 0) "a\tb")',
    "(table 1 funcref) (elem (i32.const 0) func $ret_begin)",  # element segments: refused
    "(func (I32.const 1))", "(func ,)",
])
def test_what_the_lexer_does_not_recognise_disables_both(body: str) -> None:
    assert decisions(body) == (False, False)


@pytest.mark.parametrize("body", [
    ALLOWED,
    '(data (i32.const 1024) "(; ;; call 3 \\" \\u{41}") (func (call $ret_begin)) ;; call 3\r',
    "(func (call $ret_begin)) (; call 3 (; ref.func 4 ;) ;)",
    "(memory 1 2) (table 0 10 funcref) (table $t 1 externref)",
    '(import "x" "y" (memory 1)) (import "x" "z" (table 2 funcref))',
    "(global $g (mut i64) (i64.const -0x10)) (func (drop (f32.const 0x1p3)))",
])
def test_the_allowed_forms_are_linked_and_trimmed(body: str) -> None:
    assert names_only(wasm_guest.tool(body))
    assert decisions(body) == (True, True)


def test_the_repos_wat_tools_are_linked_and_trimmed() -> None:
    """The examples and the bench's WAT tool keep the speed: linked, and trimmed."""
    from bench.report.measure import _wat_tool

    for text in [*(wasm_guest.example(p.stem) for p in wasm_guest.EXAMPLES.glob("*.wat")),
                 _wat_tool(1)]:
        assert wasm_guest.link(text, IMPORTS) is not None
        assert wasm_guest.prelude() not in wasm_guest.expand(text)
    assert names_only(wasm_guest.prelude())  # the library itself, by name only


async def test_the_allowed_forms_run_alike_linked_and_whole(
        wk: Kernel, wasm: WasmSandbox) -> None:  # noqa: F811
    """Linked first, then whole (the background compile held back until then): one result."""
    gate = threading.Event()
    wasm.cache._writer.submit(gate.wait, 10)  # the whole module waits
    pid = await start(wk)
    await register(wk, pid, "allowed", wasm_guest.tool(ALLOWED))
    assert wasm.stats["linked"] == 1 and wasm.stats["compiled"] == 0
    assert await wk.call_tool(pid, "allowed", {}) == 42
    gate.set()
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert wasm.stats["compiled"] == 1
    assert await wk.call_tool(pid, "allowed", {}) == 42
