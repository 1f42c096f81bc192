"""Host tool benchmark: the embedder's function called through the kernel (`call_tool`: the
tool call and the host tool's own check, durable intent and outcome records, a thread hop for
a sync function) beside the same function called directly, sync and async.

Each function is measured twice: doing nothing (the ratio is then all overhead) and waiting
1 ms (a fast database query or API call: what the overhead adds to real work). Beside them:
a bare `trio.to_thread.run_sync` hop, and a builtin tool (`now`, one audited syscall) through
the same `call_tool`.

Run with `python -m bench.host_tool_bench` (or `python -m bench`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.timing import best_async_us
from broker import AgentImage, HostCall, Kernel, host_tool


@host_tool(kind="bench", right="call", resource="key")
def sync_lookup(call: HostCall, key: str, wait: float = 0.0) -> dict[str, Any]:
    if wait:
        time.sleep(wait)
    return {"key": key, "value": 1}


@host_tool(kind="bench", right="call", resource="key")
async def async_lookup(call: HostCall, key: str, wait: float = 0.0) -> dict[str, Any]:
    if wait:
        await trio.sleep(wait)
    return {"key": key, "value": 1}


def _call(pid: int) -> HostCall:
    return HostCall(pid=pid, tool="bench", args={}, call=0, state=None)


async def _measure(root: Path, n_calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Kernel.open(root / "bench.db", host_tools=[sync_lookup, async_lookup]) as kernel:
        await kernel.register_image(AgentImage(
            "bench", tools=("sync_lookup", "async_lookup", "now"),
            needs=["bench:*:call", "clock:*:read"]))
        pid = kernel.spawn("bench", caps=["bench:key-*:call", "clock:*:read"])
        call = _call(pid)
        for wait, label in ((0.0, "noop"), (0.001, "1ms")):
            n = n_calls if not wait else max(50, n_calls // 10)
            args = {"key": "key-1", "wait": wait}

            async def direct_sync(args: dict[str, Any] = args) -> None:
                sync_lookup(call, **args)

            async def direct_async(args: dict[str, Any] = args) -> None:
                await async_lookup(call, **args)

            async def kernel_sync(args: dict[str, Any] = args) -> None:
                await kernel.call_tool(pid, "sync_lookup", args)

            async def kernel_async(args: dict[str, Any] = args) -> None:
                await kernel.call_tool(pid, "async_lookup", args)

            for kind, direct, through in (("sync", direct_sync, kernel_sync),
                                          ("async", direct_async, kernel_async)):
                direct_us = await best_async_us(direct, n, repeat=3)
                kernel_us = await best_async_us(through, n, repeat=3)
                out[f"{kind}_{label}_direct_us"] = round(direct_us, 1)
                out[f"{kind}_{label}_kernel_us"] = round(kernel_us, 1)
                out[f"{kind}_{label}_kernel_over_direct"] = round(kernel_us / direct_us, 1)
                out[f"{kind}_{label}_overhead_us"] = round(kernel_us - direct_us, 1)
        out["thread_hop_us"] = round(await best_async_us(
            lambda: trio.to_thread.run_sync(lambda: None), n_calls, repeat=3), 1)
        out["builtin_now_kernel_us"] = round(await best_async_us(
            lambda: kernel.call_tool(pid, "now", {}), n_calls, repeat=3), 1)
        out["async_noop_kernel_over_builtin"] = round(
            out["async_noop_kernel_us"] / out["builtin_now_kernel_us"], 2)
    return out


def run(n_calls: int = 500) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        return trio.run(_measure, Path(tmp), n_calls)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:36} {value}")
