"""Closing the Deno drivers (`sandboxes/deno.py`, `sandboxes/available.py`): a driver's home
is removed off the trio thread, and the drivers `open_sandboxes` opened close together, so a
run's other tasks (the demo's acts 2 and 3) go on meanwhile and its end waits for the slowest
driver, not for their sum (issue #17)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

import sandboxes.deno
from sandboxes.available import open_sandboxes
from sandboxes.base import close_all
from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import pyodide_available


async def test_a_closing_driver_removes_its_home_off_the_trio_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[tuple[str, bool]] = []
    rmtree = shutil.rmtree

    def recording_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        removed.append((str(path), threading.current_thread() is threading.main_thread()))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(sandboxes.deno.shutil, "rmtree", recording_rmtree)
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()  # a sandbox process runs in the home
        home = deno._tmp
        assert home is not None and os.path.isdir(home)
    assert removed == [(home, False)]  # once, in a worker thread
    assert not os.path.exists(home)


async def test_the_drivers_open_sandboxes_opened_are_told_to_close_before_any_is_waited_for(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not pyodide_available():
        pytest.skip("Pyodide is not installed here (`libos setup`): one Deno driver only")
    said: list[str] = []
    close_soon, aclose = DenoSandbox.close_soon, DenoSandbox.aclose

    def recording_close_soon(self: DenoSandbox) -> None:
        said.append(f"told {self.kind}")
        close_soon(self)

    async def recording_aclose(self: DenoSandbox) -> None:
        await aclose(self)
        said.append(f"closed {self.kind}")

    monkeypatch.setattr(DenoSandbox, "close_soon", recording_close_soon)
    monkeypatch.setattr(DenoSandbox, "aclose", recording_aclose)
    async with open_sandboxes(tmp_path, spares=0) as drivers:
        kinds = sorted(d.kind for d in drivers if isinstance(d, DenoSandbox))
        assert kinds == ["deno", "pyodide"]
    first_closed = next(i for i, what in enumerate(said) if what.startswith("closed"))
    assert set(said[:first_closed]) == {"told deno", "told pyodide"}  # (aclose tells again)
    assert sorted(w for w in said if w.startswith("closed")) == ["closed deno", "closed pyodide"]



async def test_close_all_tells_every_driver_to_close_before_it_waits_for_any(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # (what a kernel does with the drivers it opened itself)
    said: list[tuple[str, int]] = []
    close_soon, aclose = DenoSandbox.close_soon, DenoSandbox.aclose

    def recording_close_soon(self: DenoSandbox) -> None:
        said.append(("told", id(self)))
        close_soon(self)

    async def recording_aclose(self: DenoSandbox) -> None:
        await aclose(self)
        said.append(("closed", id(self)))

    monkeypatch.setattr(DenoSandbox, "close_soon", recording_close_soon)
    monkeypatch.setattr(DenoSandbox, "aclose", recording_aclose)
    drivers = [DenoSandbox(spares=0), DenoSandbox(spares=0)]
    async with contextlib.AsyncExitStack() as stack:
        for driver in drivers:
            await driver.open(stack)
        await close_all(drivers)
        first_closed = next(i for i, (what, _) in enumerate(said) if what == "closed")
        assert {who for what, who in said[:first_closed] if what == "told"} == {
            id(d) for d in drivers}
