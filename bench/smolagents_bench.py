"""smolagents executors side by side: one CodeAgent code step, run by smolagents' own
`LocalPythonExecutor` (its AST interpreter in the host process: no isolation, the tools are
plain Python calls) and by libos's `LibosPythonExecutor` (one audited call of the process's
runner tool in Pyodide inside a Deno with no permission; each tool call inside a checked,
audited libos tool call). Between them: the local executor calling the process's tools as
libos tool calls (`smolagents_tools`), the code itself unsandboxed.

Three steps: pure compute (a sum over 10 000 squares), one tool call (`add`, a host tool
doing nothing: the ratio is all overhead) and a step that reads a variable an earlier step
set. Each figure is the best per-step time over a few rounds, in µs, and each executor is
timed the same way (the executor's `__call__`, which is what the agent calls per step).

smolagents' Wasm executor is not measured: 1.26.0 ships none (only a leftover
`pyodide_deno_executor.bak.py`, which is not importable as a module and loads Pyodide from the
npm registry and a CDN at run time, with network permissions). It is tried (`bench/report/
peers.py`), and the result says what failed.

Needs `libos setup` and the smolagents extra (returns {"skipped": ...} otherwise). Run with
`python -m bench.smolagents_bench` (or `python -m bench`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.report.peers import smolagents_wasm
from bench.timing import best_us
from broker import AgentImage, HostCall, Kernel, host_tool

STEPS = {
    "compute": "total = sum(i * i for i in range(10_000))\ntotal",
    "tool": "add(a=1, b=2)",
    "state": "total + 1",
}

@host_tool(kind="bench", right="call", resource=lambda args: "add")
def add(call: HostCall, a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _time_steps(executor: Any, number: int) -> dict[str, float]:
    executor("total = 0")
    return {name: round(best_us(lambda code=code: executor(code), number, repeat=3,
                                 warmup=1), 1)
            for name, code in STEPS.items()}


def local_executor(tools: dict[str, Any]) -> Any:
    from smolagents.default_tools import FinalAnswerTool
    from smolagents.local_python_executor import LocalPythonExecutor

    executor = LocalPythonExecutor(additional_authorized_imports=[])
    executor.send_tools({**tools, "final_answer": FinalAnswerTool()})
    executor.send_variables({})
    return executor


def _plain_add() -> Any:
    from smolagents import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: the first.
            b: the second.
        """
        return a + b

    return add


async def _measure(root: Path, local_n: int, libos_n: int) -> dict[str, Any]:
    from broker.adapters.gate import ToolGate, run_sync
    from broker.adapters.smolagents import LibosPythonExecutor, code_tool, smolagents_tools
    from sandboxes.pyodide import PyodideSandbox

    out: dict[str, Any] = {"local": await run_sync(
        _time_steps, local_executor({"add": _plain_add()}), local_n)}
    async with PyodideSandbox(spares=1) as pyodide, Kernel.open(
            root / "bench.db", sandboxes=[pyodide], host_tools=[add]) as kernel:
        await kernel.register_image(AgentImage("coder", tools=("add", code_tool()),
                                               needs=["bench:*:call"]))
        pid = kernel.spawn("coder", caps=["bench:*:call"])
        async with ToolGate.open(kernel, pid, who="bench") as gate:
            tools = {t.name: t for t in smolagents_tools(gate)}
            out["local_with_libos_tools"] = await run_sync(_time_steps, local_executor(tools),
                                                           local_n)
            libos = LibosPythonExecutor(gate)
            await run_sync(libos.send_tools, {**tools, "final_answer": None})
            out["libos_pyodide"] = await run_sync(_time_steps, libos, libos_n)
    out["libos_over_local"] = {name: round(out["libos_pyodide"][name] / out["local"][name], 1)
                               for name in STEPS}
    out["wasm"] = f"not run: {smolagents_wasm()}"
    return out


def run(local_n: int = 200, libos_n: int = 20) -> dict[str, Any]:
    try:
        import smolagents  # noqa: F401

        from sandboxes.pyodide import pyodide_available
    except ImportError:
        return {"skipped": "needs the smolagents extra: pip install 'libos[smolagents]'"}
    if not pyodide_available():
        return {"skipped": "needs Pyodide: run `libos setup`"}
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        return trio.run(_measure, Path(tmp), local_n, libos_n)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:26} {value}")
