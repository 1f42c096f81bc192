"""`libos demo`'s act 2 broker (`broker.demo.NightShift`): a child forked before the demo's
trio run. Its failures are the demo's typed errors, and it never outlives the demo. The
sandboxes the `libos` command started ahead are the ones the demo's drivers run."""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
import trio
from rich.console import Console

from broker import cli_prestart
from broker.demo import NightShift, command
from broker.demo_story import NIGHT_SHIFT, Transcript, act_two, free_the_store
from broker.errors import SandboxCrashed
from broker.kernel import Kernel
from sandboxes.prestart import Spares
from sandboxes.pyodide import pyodide_available


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_night_shift_that_cannot_open_its_store_fails_act_two_with_a_typed_error(
        tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    db.mkdir()  # a directory where the store should be: the forked broker cannot open it
    (tmp_path / "demo-fs").mkdir()  # act 1 made it
    broker = NightShift(db)
    try:
        with pytest.raises(SandboxCrashed, match="night-shift broker did not start"):
            act_two(db, broker, Transcript(Console(file=StringIO())))
    finally:
        broker.close()
    assert broker.returncode is not None and _gone(broker.pid)


def test_a_night_shift_never_told_to_go_is_killed_and_reaped_when_the_demo_ends(
        tmp_path: Path) -> None:
    broker = NightShift(tmp_path / "demo.db")
    broker.close()
    broker.close()  # twice is harmless
    assert broker.returncode is not None and _gone(broker.pid)
    assert not (tmp_path / "demo.db").exists()  # it never opened the store


def test_the_demo_adopts_the_sandboxes_started_ahead(tmp_path: Path) -> None:
    """Both the TypeScript and the Pyodide spare (started as `libos demo` starts them) run the
    demo's tools: none is left unadopted, and each ended with the demo."""
    if not pyodide_available():
        pytest.skip("Pyodide is not installed here (`libos setup`)")
    spares = Spares(python=cli_prestart.start_pyodide(), ts=cli_prestart.start_ts())
    assert spares.python is not None and spares.ts is not None
    out = StringIO()
    assert command(str(tmp_path / "demo.db"), Console(file=out, width=80), spares)
    assert [s.state for s in spares.started()] == ["adopted", "adopted"]
    assert all(s.popen.poll() is not None or _gone(s.popen.pid) for s in spares.started())
    assert "summarize" in out.getvalue() and "word_count" in out.getvalue()


def test_a_night_shift_started_as_act_one_prints_runs_to_its_wait_once(tmp_path: Path) -> None:
    """Act 2's broker is told to go as soon as act 1's broker has closed the store
    (`free_the_store`), before act 2 begins: act 2 then only reads what it says."""
    db = tmp_path / "demo.db"

    async def act_one_stand_in() -> None:
        async with Kernel.open(db) as kernel:
            await kernel.register_image(NIGHT_SHIFT)

    trio.run(act_one_stand_in)
    broker = NightShift(db)
    try:
        free_the_store(db, broker)
        broker.start()  # told once: a second word would never be read
        out = StringIO()
        pid = act_two(db, broker, Transcript(Console(file=out, width=200)))
    finally:
        broker.close()
    assert f"runs night-shift (pid {pid}); it wrote two log lines" in out.getvalue()
    assert "broker exited with signal 9" in out.getvalue()
    log = (tmp_path / "demo-fs" / "shift" / "log.txt").read_text()
    assert log == "started\nhalf done\n"
