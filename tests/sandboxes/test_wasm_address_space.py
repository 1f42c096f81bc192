"""A WASM sandbox when the process has no address space left for an engine's pool.

Each engine's pooling allocator reserves ~165 GiB of address space up front (a 4 GiB memory
slot per call it may run at once), so a process has room for a few hundred of them, fewer
under RLIMIT_AS. wasmtime does not report a failed reservation: its C API panics and the
whole process (the broker) aborts. These tests run a broker in a subprocess with RLIMIT_AS
set so that no pool (or only some) fits, and ask that every tool is still served: the
sandboxes with no room map each call's memory on demand instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, resource, sys
from pathlib import Path

limit = int(sys.argv[2]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

import trio
from broker import AgentImage, Kernel, LimitExceeded
from sandboxes import wasm_guest
from sandboxes.base import CallLimits, ToolCode
from sandboxes.testing import NullHost
from sandboxes.wasm import WasmSandbox

tmp = Path(sys.argv[1])
TOOL = '(func (export "run") (param $a i32) (param $n i32) (result i64)\n' \
       '  (call $ret_begin) (call $mp_int (i64.const {value})) (call $ret_end))'
GREEDY = '(func (export "run") (param $a i32) (param $n i32) (result i64)\n' \
         '  (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))\n' \
         '  (unreachable))'


async def processes(count):
    # One broker, many processes, each registering a WAT tool of its own and calling it.
    sandbox = WasmSandbox(tmp / "cache")
    out = {"pooled": sandbox.pooled, "results": []}
    async with Kernel.open(tmp / "k.db", sandboxes=[sandbox]) as kernel:
        await kernel.register_image(AgentImage(
            "user", tools=("register_tool",), needs=("tool:*:register,call",)))
        for i in range(count):
            pid = kernel.spawn("user", caps=["tool:wat:register"])
            await kernel.call_tool(pid, "register_tool", {
                "name": f"t{i}", "lang": "wat",
                "source": wasm_guest.tool(TOOL.format(value=i))})
            out["results"].append(await kernel.call_tool(pid, f"t{i}", {}))
        pid = kernel.spawn("user", caps=["tool:wat:register"])
        await kernel.call_tool(pid, "register_tool", {
            "name": "greedy", "lang": "wat", "source": wasm_guest.tool(GREEDY)})
        try:
            await kernel.call_tool(pid, "greedy", {})
        except LimitExceeded as exc:
            out["greedy"] = exc.code
    return out


async def sandboxes(count):
    # Many sandboxes (engines) in one process, all kept open, each calling a tool.
    host, limits = NullHost(1.0, tool="t", authority="a"), CallLimits()
    out = {"results": []}
    opened = []
    for i in range(count):
        sandbox = WasmSandbox(tmp / f"cache{i}")
        opened.append(sandbox)
        wasm = await sandbox.prepare("t", "wat", wasm_guest.tool(TOOL.format(value=i)).encode())
        code = ToolCode("t", "wat", wasm, __import__("hashlib").sha256(wasm).hexdigest())
        out["results"].append(await sandbox.call(code, {}, host, limits))
    out["pooled"] = [sandbox.pooled for sandbox in opened]
    for sandbox in opened:
        await sandbox.aclose()
    return out


print(json.dumps(trio.run(globals()[sys.argv[3]], int(sys.argv[4]))))
"""


def run_limited(tmp_path: Path, limit_gib: int, case: str, count: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(limit_gib), case,
                          str(count)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_broker_with_no_room_for_a_pool_serves_every_process(tmp_path: Path) -> None:
    """Under a 24 GiB address-space limit no pool fits: the broker does not abort, and each
    of many processes registers its own WAT tool and gets its own answer; a tool asking for
    more memory than its limit still gets the typed error."""
    found = run_limited(tmp_path, 24, "processes", 40)
    assert found["pooled"] is False
    assert found["results"] == list(range(40))
    assert found["greedy"] == "LIMIT_EXCEEDED"


def test_more_engines_than_pools_fit_are_all_served(tmp_path: Path) -> None:
    """Room for two pools (400 GiB): the first sandboxes get one, the later ones map memory
    on demand, and every one of them runs its tool."""
    found = run_limited(tmp_path, 400, "sandboxes", 4)
    assert found["results"] == [0, 1, 2, 3]
    assert found["pooled"][0] is True
    assert found["pooled"][-1] is False
