"""The sandboxes this machine can run, opened together: Deno (TypeScript) and Wasmtime
(WAT/WASM) always, Pyodide (Python) once `libos setup` has installed its assets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from sandboxes.base import Sandbox
from sandboxes.prestart import Prestarted

log = logging.getLogger("libos.sandboxes")
# How long opening waits for the spares' processes to be spawned before it goes on.
SPAWN_WAIT = 0.5


@asynccontextmanager
async def open_sandboxes(work: Path, *, spares: int = 1, refill: bool = True,
                         python_spare: Prestarted | None = None,
                         ts_spare: Prestarted | None = None) -> AsyncIterator[list[Sandbox]]:
    """Open every available sandbox; `work` holds their caches (compiled wasm modules).
    A kind that cannot start here is left out (its tools are then refused with a typed
    error), and that is logged, not hidden. Without `refill`, each keeps `spares` started
    sandboxes at first and replaces none it hands out (a short run that needs no more).
    `python_spare`, `ts_spare`: a Pyodide and a TypeScript sandbox started ahead, for their
    drivers to adopt (`sandboxes/prestart.py`); the caller closes those none did."""
    from sandboxes.deno import DenoSandbox

    async with AsyncExitStack() as stack:
        python: list[DenoSandbox] = []
        try:
            from sandboxes.pyodide import PyodideSandbox, pyodide_available
        except ImportError:
            log.info("Python tools unavailable: no Pyodide sandbox in this build")
        else:
            if pyodide_available():  # opened first: its start is the longest
                python.append(await stack.enter_async_context(
                    PyodideSandbox(spares=spares, refill=refill, prestarted=python_spare)))
            else:
                log.info("Python tools unavailable: run `libos setup` to install Pyodide")
        deno = await stack.enter_async_context(DenoSandbox(spares=spares, refill=refill,
                                                                prestarted=ts_spare))
        # Their spares' processes are spawned before Wasmtime is imported and its cache opened
        # (which hold this thread): they start meanwhile.
        with trio.move_on_after(SPAWN_WAIT):
            while not all(s.running() for s in (deno, *python) if s.spares):
                await trio.sleep(0.001)
        from sandboxes.wasm import WasmSandbox

        wasm = await stack.enter_async_context(WasmSandbox(work / "wasm-cache"))
        try:
            yield [deno, wasm, *python]
        finally:
            for driver in (deno, *python):  # closed together, not one after another
                driver.close_soon()
