"""The peers measured beside libos, each imported only when it is used (the `bench` extra:
`pip install 'libos[bench]'`), and the ones that cannot run here, each tried offline so the
report says what failed rather than what we expect to fail.

Runnable offline:
- Extism (`extism`): a WebAssembly plugin host over wasmtime; a no-op plugin (`run` returns 0)
  called warm, from a fresh plugin instance of a compiled module, and cold (compile included).
- denobox (`denobox`, Simon Willison's JavaScript and WebAssembly in a permissionless Deno
  driven over NDJSON): a warm `eval`, a call into a loaded WebAssembly module, and a cold start
  with its first `eval`.
- smolagents' `LocalPythonExecutor` (an AST interpreter in the host process: no isolation).

Tried and reported as not runnable: smolagents' Wasm executor, mcp-run-python and
langchain-sandbox. Their Deno code runs with a private empty DENO_DIR and every proxy variable
pointing at a closed loopback port, so a fetch it tries fails here and nothing leaves the
machine.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandboxes.deno import find_deno

EXTRA = "pip install 'libos[bench]'"
# A no-op Extism plugin: Extism calls an export with no arguments that returns an i32 status.
NOOP_WAT = ('(module (memory (export "memory") 1) '
            '(func (export "run") (result i32) i32.const 0))')
LANGCHAIN_SANDBOX = "jsr:@langchain/pyodide-sandbox@0.0.4"  # what langchain-sandbox 0.0.6 runs
TRY_SECONDS = 60.0
MODULES = {"Extism": "extism", "denobox": "denobox",
           "smolagents LocalPythonExecutor": "smolagents"}


def noop_wasm() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(NOOP_WAT))


def deno_on_path() -> dict[str, str]:
    """This environment with the `deno` of the PyPI package first on PATH (denobox,
    mcp-run-python and langchain-sandbox all run `deno` by name)."""
    return {**os.environ,
            "PATH": os.pathsep.join([str(Path(find_deno()).parent), os.environ.get("PATH", "")])}


def offline_env(deno_dir: Path) -> dict[str, str]:
    """For a peer tried offline: an empty Deno cache of its own, and every proxy a closed
    loopback port (port 9, discard: nothing listens), so any fetch fails at once, here."""
    dead = "http://127.0.0.1:9"
    return {**deno_on_path(), "DENO_DIR": str(deno_dir), "NO_COLOR": "1",
            "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
            "ALL_PROXY": dead, "NO_PROXY": "", "no_proxy": ""}


def _missing(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"not installed ({exc.name}): {EXTRA}"
    return None


class Peers:
    """What each peer did in this run: `ran[name]` is True, or `skipped[name]` says why."""

    def __init__(self) -> None:
        self.ran: dict[str, bool] = {}
        self.skipped: dict[str, str] = {}

    def has(self, name: str) -> bool:
        """Whether the peer `name` (a key of MODULES) is installed; recorded either way."""
        reason = _missing(MODULES[name])
        if reason is not None:
            self.skipped[name] = reason
            return False
        self.ran[name] = True
        return True

    def extism(self) -> Any | None:
        """The `extism` module, or None (and why)."""
        return importlib.import_module("extism") if self.has("Extism") else None

    @contextlib.contextmanager
    def denobox(self) -> Iterator[Any | None]:
        """A started `Denobox`, or None (and why)."""
        if not self.has("denobox"):
            yield None
            return
        box = start_denobox()
        try:
            yield box
        finally:
            box.stop()

    def smolagents_local(self) -> Any | None:
        """smolagents' `LocalPythonExecutor` with no tools, or None (and why)."""
        if not self.has("smolagents LocalPythonExecutor"):
            return None
        from bench.smolagents_bench import local_executor

        executor = local_executor({})
        executor("x = None")
        return executor

    def try_unrunnable(self) -> None:
        """Try each peer that does not run offline here; record what failed."""
        for name, attempt in (("smolagents Wasm executor", smolagents_wasm),
                              ("mcp-run-python", mcp_run_python),
                              ("langchain-sandbox", langchain_sandbox)):
            try:
                reason = attempt()
            except Exception as exc:  # what failed is the finding, whatever it is
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                self.ran[name] = True
            else:
                self.skipped[name] = reason


def start_denobox() -> Any:
    from denobox import Denobox

    env = deno_on_path()
    saved = os.environ.get("PATH")
    os.environ["PATH"] = env["PATH"]  # denobox runs `deno` from PATH
    try:
        box = Denobox()
        box.start()
    finally:
        if saved is not None:
            os.environ["PATH"] = saved
    return box


def _last_error(text: str) -> str:
    """The line of a Deno failure that says what failed."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    found = next((line[line.index("error:"):] for line in lines if "error:" in line),
                 lines[-1] if lines else "no output")
    # where in its temporary copy, and Deno's backtrace, say nothing more
    return re.split(r"\s*(?:\.?at file:|Stack backtrace)", found)[0][:300]


def smolagents_wasm() -> str | None:
    """smolagents names no Wasm executor in 1.26.0: the agent refuses the executor type, and
    the leftover Pyodide-in-Deno module is not importable."""
    missing = _missing("smolagents")
    if missing:
        return missing
    import smolagents
    from smolagents import CodeAgent

    failures = []
    try:
        CodeAgent(tools=[], model=None, executor_type="wasm")  # type: ignore[arg-type]
    except Exception as exc:
        failures.append(f'CodeAgent(executor_type="wasm") raises {type(exc).__name__}: {exc}')
    else:
        return None
    try:
        importlib.import_module("smolagents.pyodide_deno_executor")
    except ImportError as exc:
        failures.append(f"{exc} (only pyodide_deno_executor.bak.py is shipped; it imports "
                        "https://deno.land/std and npm:pyodide at run time)")
    return f"smolagents {smolagents.__version__}: " + "; ".join(failures)


def mcp_run_python() -> str | None:
    """Start its MCP server as its own `code_sandbox` does, offline, and run `1 + 1`."""
    missing = _missing("mcp_run_python")
    if missing:
        return missing
    code = (
        "import anyio\n"
        "from mcp_run_python import code_sandbox\n"
        "async def main():\n"
        "    async with code_sandbox(allow_networking=False) as box:\n"
        "        print(await box.eval('1 + 1'))\n"
        "anyio.run(main)\n")
    with tempfile.TemporaryDirectory(prefix="libos-peer-") as tmp:
        done = subprocess.run([sys.executable, "-c", code], env=offline_env(Path(tmp)),
                              cwd=tmp, capture_output=True, text=True, timeout=TRY_SECONDS)
    if done.returncode == 0:
        return None
    return f"its Deno server fails to start offline: {_last_error(done.stderr)}"


def langchain_sandbox() -> str | None:
    """langchain-sandbox 0.0.6 requires langchain-core < 0.4 (libos's langchain adapter pins
    1.8.3), so it is not in the `bench` extra; what it runs is `deno run` of its sandbox from
    JSR, which is tried here as it would run it."""
    with tempfile.TemporaryDirectory(prefix="libos-peer-") as tmp:
        done = subprocess.run(
            [find_deno(), "run", "--allow-read", "--allow-write", LANGCHAIN_SANDBOX,
             "-c", "print(1 + 1)"], env=offline_env(Path(tmp)), cwd=tmp,
            capture_output=True, text=True, timeout=TRY_SECONDS)
    if done.returncode == 0:
        return None
    return ("not installable beside libos (langchain-sandbox 0.0.6 requires "
            "langchain-core<0.4; libos pins 1.8.3); the sandbox it wraps, `deno run "
            f"{LANGCHAIN_SANDBOX}`, fails offline: {_last_error(done.stderr)}")
