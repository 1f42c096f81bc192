"""Red team (rt/holes) of the compile bound (`sandboxes/wasm_compile.py`): Cranelift's work is
not all in the code section. Wasmtime compiles a trampoline per function type (array <-> wasm)
and one per escaping function, each copying the type's parameters; a type may have 1,000 of
them. So a module of empty functions (2 bytes each) of one 1,000-parameter type, named in a
declarative element segment, weighed (2, 2 per function) and compiled in the broker's thread:
1,000 of them (6.9 KB) took 15.7 s of CPU; 200 types of 1,000 parameters and no function at
all (cost (0, 0)) took 3.1 s. Real Wasmtime, a real child process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel, LimitExceeded
from sandboxes.wasm_compile import cost, is_small
from tests.sandboxes.test_wasm import records, register, start
from tests.sandboxes.test_wasm_attacks import still_serving
from tests.sandboxes.test_wasm_compile import _leb, ck  # noqa: F401 (a fixture)


def _section(n: int, body: bytes) -> bytes:
    return bytes([n]) + _leb(len(body)) + body


def _vec(items: list[bytes]) -> bytes:
    return _leb(len(items)) + b"".join(items)


def _type(params: int, variant: int = 0) -> bytes:
    kinds = [b"\x7e" if variant >> j & 1 else b"\x7f" for j in range(params)]
    return b"\x60" + _vec(kinds) + b"\x00"


def escaping(functions: int, params: int) -> bytes:
    """`functions` empty functions of one `params`-parameter type, all escaping (a declarative
    element segment names them): one trampoline each."""
    body = b"\x00\x0b"
    elem = _vec([b"\x03\x00" + _vec([_leb(i) for i in range(functions)])])
    return (b"\0asm\x01\0\0\0" + _section(1, _vec([_type(params)]))
            + _section(3, _vec([b"\x00"] * functions)) + _section(9, elem)
            + _section(10, _vec([_leb(len(body)) + body] * functions)))


def types_only(types: int, params: int) -> bytes:
    """`types` distinct function types of `params` parameters, and nothing else."""
    return b"\0asm\x01\0\0\0" + _section(1, _vec([_type(params, i) for i in range(types)]))


def test_many_small_functions_weigh() -> None:
    """Each function is a compile unit of its own (and an escaping one a trampoline too):
    32,000 empty ones weighed 2 bytes each (64,000, just under the bound) and took 2.4 s of
    CPU (5 s escaping) in the broker's thread."""
    assert not is_small(escaping(32_000, 0))
    assert is_small(escaping(100, 0))


def test_trampolines_weigh() -> None:
    assert not is_small(escaping(1000, 1000))  # 6.9 KB, 15.7 s of CPU in the broker
    assert not is_small(types_only(200, 1000))  # 200 KB, 3.1 s, no code section
    assert is_small(escaping(10, 3)) and is_small(types_only(10, 3))
    # 12,800 distinct types of 5 values (64,000 by their values alone): 0.9 s of CPU
    assert not is_small(types_only(12_800, 5))


@pytest.mark.parametrize(
    "wasm", [escaping(400, 1000), types_only(300, 1000), escaping(32_000, 0)],
    ids=["escaping", "types", "functions"])
async def test_a_module_of_trampolines_is_limit_exceeded(ck: Kernel, wasm: bytes) -> None:  # noqa: F811
    """Without the weighing of types it compiled in the broker's thread for seconds (then was
    refused for its ABI, InvalidArgument): now it is the child's, killed past its second."""
    pid = await start(ck)
    with pytest.raises(LimitExceeded, match="compile"):
        await register(ck, pid, "slow", wasm, lang="wasm")
    assert ck.sandboxes["wasm"].stats["isolated"] == 1
    outcome = records(ck, pid, "tool.register")[-1]
    assert outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    assert _compile_children() == []  # killed and reaped: no child left, not even a zombie
    await still_serving(ck, pid)


def _compile_children() -> list[int]:
    """Python processes this one started and has not reaped (a zombie's command line is
    gone, its name is not): compile children, the only Python children here."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name, rest = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1]
            ppid = int(rest.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and name.startswith("python"):
            found.append(int(stat.parent.name))
    return found


def test_what_the_reader_does_not_follow_is_not_small() -> None:
    """Held: the weighing fails closed. Bytes it cannot follow (a GC type, an overlong LEB, a
    code section that disagrees with the function section) are not small: the child's (after
    wasmtime's linear validation refuses what is invalid)."""
    head = b"\0asm\x01\0\0\0"
    assert cost(head + _section(1, b"\x01\x5f\x00")) is None  # a struct type
    assert cost(head + _section(1, b"\x01\x60\x80\x80\x80\x80\x80\x00\x00")) is None
    two = _section(3, _vec([b"\x00", b"\x00"]))
    one_body = _section(10, _vec([b"\x02\x00\x0b"]))
    assert cost(head + _section(1, _vec([_type(0)])) + two + one_body) is None


@pytest.mark.parametrize("wasm", [
    b"\0asm\x0d\0\x01\0",  # a component's preamble
    b"\0asm\x01\0\0\0" + _section(1, b"\x01\x60\x80\x80\x80\x80\x80\x00\x00"),
    b"\0asm\x01\0\0\0" + _section(10, b"\x01\xff\xff\xff\xff\x0f"),  # a body of 4 GB
], ids=["component", "overlong-leb", "huge-body"])
async def test_odd_modules_are_invalid_not_slow(ck: Kernel, wasm: bytes) -> None:  # noqa: F811
    pid = await start(ck)
    with pytest.raises(InvalidArgument):
        await register(ck, pid, "odd", wasm, lang="wasm")
    await still_serving(ck, pid)
