"""Benchmark of TypeScript tools in the Deno sandbox, beside raw baselines from the same run.

Run with `python -m bench.deno_bench` (prints JSON); `run()` returns the figures as a dict.

Measured (median per operation, microseconds, unless noted):

- baselines: a trio pipe echo of one call-sized frame through `cat`; the same no-op tool run
  by a persistent raw Deno process speaking the same framing (the codec of ts-runtime, no
  libos runtime, no pool, no checks), driven from Python with the same pipe I/O as the driver
  (`raw_deno`, the floor a warm call is compared with) and through trio's streams
  (`raw_deno_trio_streams`); the same with 1 and 100 syscalls answered by a constant; and
  `deno run` of a file (a process per call);
- the sandbox driver (`DenoSandbox.call`) with a minimal host: a warm no-op call, a tool making
  1 and 100 syscalls (fast path, answered inline by the reader);
- the whole kernel path (`Kernel.call_tool`: dispatch, audit, argument validation, sandbox):
  warm no-op, 1 and 100 real `clock.now` syscalls (each audited), JIT `register_tool` + first
  call, and a cold call (no spare: a process start inside the call);
- cold sandbox start (process start to hello).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.timing import kernel_cold_call_us
from broker.errors import SandboxCrashed
from broker.protocol import FrameDecoder, encode_frame
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import RUNTIME_DIR, DenoSandbox, deno_flags, find_deno
from sandboxes.testing import NullHost

NOOP = "export default async function run(args, libos) { return null; }"
SYSCALLS = """export default async function run(args, libos) {
  let t = 0;
  for (let i = 0; i < args.n; i++) t = await libos.clock.now();
  return t;
}"""

def raw_deno(setup: str, on_message: str) -> str:
    """A raw Deno peer's script: the frame codec over stdin/stdout, `setup` run once, and
    `on_message` run for each decoded message `m` (with `write(frame)` at hand)."""
    return f"""
import {{ encodeFrame, FrameDecoder }} from "RUNTIME/msgpack.ts";
const out = Deno.stdout;
function write(f) {{ let o = 0; while (o < f.length) o += out.writeSync(f.subarray(o)); }}
{setup}
write(encodeFrame({{ t: "hello", v: 1, kind: "deno" }}));
const dec = new FrameDecoder();
const buf = new Uint8Array(65536);
while (true) {{
  const n = await Deno.stdin.read(buf);
  if (n === null) break;
  dec.feed(buf.slice(0, n));
  for (let d = dec.next(); d !== null; d = dec.next()) {{
    const m = d.value;
{on_message}
  }}
}}
"""


# A persistent raw Deno answering calls of a tool that makes `n` clock.now syscalls.
RAW_DENO = raw_deno("""const pending = new Map();
let seq = 0;
const libos = { clock: { now: () => new Promise((resolve) => {
  const s = seq++; pending.set(s, resolve);
  write(encodeFrame({ t: "syscall", id: current, seq: s, name: "clock.now", args: {} }));
}) } };
let current = 0;
async function tool(args, libos) {
  let t = 0;
  for (let i = 0; i < (args.n ?? 0); i++) t = await libos.clock.now();
  return null;
}""", """    if (m.t === "call") {
      current = m.id;
      tool(m.args, libos).then((value) => write(encodeFrame({ t: "result", id: m.id, value })));
    } else if (m.t === "sysret") {
      const r = pending.get(m.seq); pending.delete(m.seq); r(m.value);
    }""")

ONE_SHOT = """
export default async function run(args, libos) { return null; }
const v = await run({}, null);
Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(v)));
"""


class _RawPeer:
    """A persistent child process driven over trio pipes with the frame codec: through trio's
    streams (`direct=False`), or with os.read/os.write on the non-blocking pipes and trio only
    to wait (`direct=True`, what the sandbox driver does)."""

    def __init__(self, process: trio.Process, direct: bool) -> None:
        self.process = process
        self.decoder = FrameDecoder()
        self.direct = direct
        self.next_id = 0
        self.rfd = process.stdout.fileno()  # type: ignore[union-attr]
        self.wfd = process.stdin.fileno()  # type: ignore[union-attr]

    async def frame(self) -> dict[str, Any]:
        while True:
            body = self.decoder.next_frame()
            if body is not None:
                return body
            if self.direct:
                try:
                    chunk = os.read(self.rfd, 65536)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.rfd)
                    continue
            else:
                chunk = await self.process.stdout.receive_some(65536)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError("raw peer closed its stdout")
            self.decoder.feed(chunk)

    async def send(self, data: bytes) -> None:
        if self.direct:
            try:
                n = os.write(self.wfd, data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            data = data[n:]
        await self.process.stdin.send_all(data)  # type: ignore[union-attr]


async def _interleaved(cases: dict[str, Callable[[], Awaitable[Any]]], n: int,
                       warmup: int = 20,
                       setup: Callable[[], Awaitable[Any]] | None = None) -> dict[str, float]:
    """Median time of each case, measured round-robin so that load from anything else on
    the machine falls on every case alike (`setup`, untimed, before each round)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + n):
        if setup is not None:
            await setup()
        for name, fn in cases.items():
            t0 = time.perf_counter()
            await fn()
            if i >= warmup:
                samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1e6 for name, v in samples.items()}


async def _open_raw(tmp: Path, direct: bool,
                    source: str = RAW_DENO) -> tuple[trio.Process, _RawPeer]:
    """A persistent raw Deno running `source` (RUNTIME: the runtime's directory), past its
    hello."""
    script = tmp / "raw.js"
    script.write_text(source.replace("RUNTIME", RUNTIME_DIR.as_uri()))
    env = {"NO_COLOR": "1", "DENO_DIR": str(tmp / "deno-dir")}
    process = await trio.lowlevel.open_process(
        [find_deno(), *deno_flags(256), str(script)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env=env, cwd=str(tmp))
    peer = _RawPeer(process, direct)
    await peer.frame()  # hello
    return process, peer


def _raw_call(peer: _RawPeer, k: int) -> Callable[[], Awaitable[None]]:
    async def go() -> None:
        peer.next_id += 1
        call_id = peer.next_id
        await peer.send(encode_frame({"t": "call", "id": call_id, "tool": "noop",
                                      "args": {"n": k}}))
        while True:
            msg = await peer.frame()
            if msg["t"] == "result":
                return
            await peer.send(encode_frame({"t": "sysret", "id": call_id, "seq": msg["seq"],
                                          "ok": True, "value": 1.0}))
    return go


def _pipe_echo(process: trio.Process) -> Callable[[], Awaitable[None]]:
    frame = encode_frame({"t": "call", "id": 1, "tool": "noop", "args": {}})

    async def once() -> None:
        await process.stdin.send_all(frame)  # type: ignore[union-attr]
        got = 0
        while got < len(frame):
            got += len(await process.stdout.receive_some(65536))  # type: ignore[union-attr]
    return once


async def _main(n: int) -> dict[str, Any]:
    from broker import AgentImage, Kernel

    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp_:
        tmp = Path(tmp_)
        (tmp / "deno-dir").mkdir()
        procs: list[trio.Process] = []
        try:
            cat = await trio.lowlevel.open_process(["cat"], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE)
            procs.append(cat)
            raw_process, raw = await _open_raw(tmp, direct=True)
            procs.append(raw_process)
            slow_process, slow = await _open_raw(tmp, direct=False)
            procs.append(slow_process)
            async with DenoSandbox(spares=1) as deno, Kernel.open(
                    tmp / "k.db", sandboxes=[deno]) as kernel:
                await deno.warm()
                noop = ToolCode("noop", "ts", NOOP.encode(), "h-noop")
                sys_tool = ToolCode("sys", "ts", SYSCALLS.encode(), "h-sys")
                host, limits = NullHost(1.0, tool="bench", authority="bench/-"), CallLimits()
                await kernel.register_image(AgentImage(
                    "bench", tools=("register_tool",),
                    needs=("tool:*:register,call", "clock:*:read")))
                pid = kernel.spawn("bench", caps=["tool:ts:register", "clock:*:read"])
                await kernel.call_tool(pid, "register_tool", {
                    "name": "noop", "lang": "ts", "source": NOOP})
                await kernel.call_tool(pid, "register_tool", {
                    "name": "sys", "lang": "ts", "source": SYSCALLS,
                    "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}})
                small = await _interleaved({
                    "pipe_echo_cat": _pipe_echo(cat),
                    "raw_deno_noop": _raw_call(raw, 0),
                    "raw_deno_trio_streams_noop": _raw_call(slow, 0),
                    "driver_warm_noop": lambda: deno.call(noop, {}, host, limits),
                    "kernel_warm_noop": lambda: kernel.call_tool(pid, "noop", {}),
                    "raw_deno_syscalls_1": _raw_call(raw, 1),
                    "driver_syscalls_1": lambda: deno.call(sys_tool, {"n": 1}, host, limits),
                    "kernel_syscalls_1": lambda: kernel.call_tool(pid, "sys", {"n": 1}),
                }, n)
                big = await _interleaved({
                    "raw_deno_syscalls_100": _raw_call(raw, 100),
                    "driver_syscalls_100": lambda: deno.call(sys_tool, {"n": 100}, host,
                                                             limits),
                    "kernel_syscalls_100": lambda: kernel.call_tool(pid, "sys", {"n": 100}),
                }, max(20, n // 10), warmup=3)
                counter = iter(range(1 << 30))

                async def jit() -> None:
                    i = next(counter)
                    source = f"export default async function run() {{ return {i}; }}"
                    await kernel.call_tool(pid, "register_tool", {
                        "name": f"jit{i}", "lang": "ts", "source": source})
                    await kernel.call_tool(pid, f"jit{i}", {})

                async def start() -> None:
                    sb = await deno._start(deno.memory_mb)
                    sb.kill(SandboxCrashed("bench"))
                    await sb.gone.wait()

                script = tmp / "oneshot.js"
                script.write_text(ONE_SHOT)
                argv = [find_deno(), *deno_flags(256), str(script)]
                env = {"NO_COLOR": "1", "DENO_DIR": str(tmp / "deno-dir")}

                async def oneshot() -> None:
                    await trio.run_process(argv, env=env, cwd=str(tmp), capture_stdout=True)

                slow_cases = await _interleaved({
                    "jit_register_first_call": jit,
                    "cold_sandbox_start": start,
                    "deno_run_file": oneshot,
                }, 15, warmup=2)
            # cold call: a new authority and no spare, so the call starts a Deno process
            async with DenoSandbox(spares=0) as deno:
                slow_cases["kernel_cold_call_no_spare"] = await kernel_cold_call_us(
                    deno, "ts", NOOP, tmp / "k2.db", 10)
        finally:
            for p in procs:
                p.kill()
                await p.wait()
    f = {**small, **big, **slow_cases}
    ratios = {
        "driver_warm_noop / raw_deno_noop": f["driver_warm_noop"] / f["raw_deno_noop"],
        "driver_syscalls_1 / raw_deno_syscalls_1":
            f["driver_syscalls_1"] / f["raw_deno_syscalls_1"],
        "driver_syscalls_100 / raw_deno_syscalls_100":
            f["driver_syscalls_100"] / f["raw_deno_syscalls_100"],
        "kernel_warm_noop / raw_deno_noop": f["kernel_warm_noop"] / f["raw_deno_noop"],
        "raw_deno_noop / pipe_echo_cat": f["raw_deno_noop"] / f["pipe_echo_cat"],
        "raw_deno_trio_streams_noop / raw_deno_noop":
            f["raw_deno_trio_streams_noop"] / f["raw_deno_noop"],
        "deno_run_file / driver_warm_noop": f["deno_run_file"] / f["driver_warm_noop"],
        "deno_run_file / kernel_warm_noop": f["deno_run_file"] / f["kernel_warm_noop"],
        "cold_sandbox_start / driver_warm_noop":
            f["cold_sandbox_start"] / f["driver_warm_noop"],
        "jit_register_first_call / kernel_warm_noop":
            f["jit_register_first_call"] / f["kernel_warm_noop"],
    }
    per_syscall = {
        "driver": (f["driver_syscalls_100"] - f["driver_warm_noop"]) / 100,
        "kernel": (f["kernel_syscalls_100"] - f["kernel_warm_noop"]) / 100,
        "raw_deno": (f["raw_deno_syscalls_100"] - f["raw_deno_noop"]) / 100,
    }
    return {"unit": "microseconds (median)", "cpus": os.cpu_count(), "figures": f,
            "per_syscall_us": per_syscall, "ratios": ratios}


def run(n: int = 300) -> dict[str, Any]:
    return trio.run(_main, n)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
