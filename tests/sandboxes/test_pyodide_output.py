"""A Python tool's warm call in Pyodide: what it gets (its arguments, a fresh dict each call,
also when there are none, which cross into Python as nothing at all) and what it prints (that
call's log, whatever stream the tool writes through: ts-runtime/pyodide/libos.py
`_write_through_output`, `_flush`)."""

from __future__ import annotations

from functools import partial

import pytest

from broker import Kernel
from sandboxes.pyodide import pyodide_available
from tests.sandboxes.conftest import agent, logs, run_tool

pytestmark = pytest.mark.skipif(not pyodide_available(),
                                reason="Pyodide is not installed: run `libos setup`")

tool = partial(run_tool, lang="python")


async def test_the_standard_streams_hold_nothing_back_for_a_flush(pk: Kernel) -> None:
    # Write-through streams over the descriptors: a call's end need not flush them (a flush
    # of both at every call's end was a tenth of a warm call), and an unterminated line still
    # reaches the host during the call, which logs it as the call's when the call ends.
    pid = agent(pk)
    source = ("import sys\ndef run(args, libos):\n"
              "    sys.stdout.write('no newline')\n"
              "    sys.stderr.write('nor here')\n"
              "    return [s.write_through and s is getattr(sys, '__' + n + '__')\n"
              "            for n, s in (('stdout', sys.stdout), ('stderr', sys.stderr))]\n")
    assert await tool(pk, pid, source) == [True, True]
    assert logs(pk, pid) == ["no newline", "nor here"]


async def test_a_buffered_stream_a_tool_puts_in_place_is_still_flushed_at_the_call_end(
        pk: Kernel) -> None:
    pid = agent(pk)
    source = ("import io, sys\n"
              "def run(args, libos):\n"
              "    if not hasattr(sys.stdout, 'mine'):\n"
              "        sys.stdout = io.TextIOWrapper(io.BufferedWriter(\n"
              "            io.FileIO(1, 'w', closefd=False), 1 << 16))\n"
              "        sys.stdout.mine = True\n"
              "    print('kept in a buffer', end='')\n"
              "    return args['n']\n")
    assert await tool(pk, pid, source, {"n": 1}) == 1
    assert logs(pk, pid) == ["kept in a buffer"]
    # a neighbour call of the same tool: its own output, the first call's not repeated
    assert await pk.call_tool(pid, "t", {"n": 2}) == 2
    assert logs(pk, pid) == ["kept in a buffer", "kept in a buffer"]


async def test_each_call_gets_fresh_arguments_also_when_it_has_none(pk: Kernel) -> None:
    pid = agent(pk)
    source = ("seen = []\ndef run(args, libos):\n    seen.append(args)\n"
              "    args['k'] = len(seen)\n"
              "    return [args, type(args).__name__, len({id(a) for a in seen})]\n")
    assert await tool(pk, pid, source) == [{"k": 1}, "dict", 1]
    assert await pk.call_tool(pid, "t", {}) == [{"k": 2}, "dict", 2]
    assert await pk.call_tool(pid, "t", {"a": None}) == [{"a": None, "k": 3}, "dict", 3]
    assert await pk.call_tool(pid, "t", {}) == [{"k": 4}, "dict", 4]
