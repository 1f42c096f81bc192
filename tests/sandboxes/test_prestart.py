"""A Deno sandbox process started before trio (`sandboxes/prestart.py`), as `libos demo` starts
its Pyodide sandbox: the driver adopts it as its first spare only if it is the process it would
have started itself, and every way it can end unadopted leaves no process and no directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
import trio

from broker import cli_prestart
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.deno_launch import DATA_BASE_MB, rlimit_data_mb
from sandboxes.prestart import Prestarted, start
from sandboxes.testing import NullHost
from tests.sandboxes.test_deno import alive

ECHO = b"export default async function run(args: unknown) { return args; }"
CODE = ToolCode("echo", "ts", ECHO, hashlib.sha256(ECHO).hexdigest())


def prestart(driver: DenoSandbox, *, emit_cache: bool | None = None) -> Prestarted:
    return start(driver.argv(driver.memory_mb, driver.runtime),
                 rlimit_data_mb(DATA_BASE_MB, driver.memory_mb),
                 emit_cache=driver.emit_cache if emit_cache is None else emit_cache)


async def test_the_driver_adopts_it_as_its_first_spare_and_runs_calls_in_it() -> None:
    early = prestart(DenoSandbox())
    async with DenoSandbox(prestarted=early, refill=False) as driver:
        await driver.warm()
        out = await driver.call(CODE, {"n": 1}, NullHost(), CallLimits(deadline=10))
        assert out == {"n": 1}
        assert early.state == "adopted"
        assert [sb.process.pid for sb in driver._all] == [early.popen.pid]
        assert driver.stats["started"] == 1 and driver.stats["spare_acquires"] == 1
        assert driver._tmp == early.home.tmp  # the service runs in the home made for it
        # the memory cap it was started with is the driver's own
        with open(f"/proc/{early.popen.pid}/limits") as f:
            data = next(line for line in f if line.startswith("Max data size"))
        assert str(rlimit_data_mb(DATA_BASE_MB, driver.memory_mb) << 20) in data
    assert not alive(early.popen.pid)
    assert not Path(early.home.tmp).exists()
    early.close()  # the driver's now: nothing to do
    assert early.state == "adopted"


async def test_the_demo_s_typescript_spare_keeps_no_compiled_tool_like_the_driver_s_own(
        ) -> None:
    """`libos demo`'s TypeScript spare is started as its driver starts its sandboxes: Deno keeps
    no tool it transpiles in the DENO_DIR (`DenoSandbox.emit_cache`), the adopted spare's
    tools no more than another's."""
    marker = b"prestart-marker-9d2e"
    source = b"export default async function run(): Promise<string> { return '%s'; }" % marker
    early = cli_prestart.start_ts()
    assert early is not None
    async with DenoSandbox(prestarted=early, refill=False) as driver:
        await driver.warm()
        for sb_pid in (early.popen.pid, None):  # the adopted spare, then one the driver starts
            code = ToolCode(f"t{sb_pid}", "ts", source, hashlib.sha256(source).hexdigest())
            assert await driver.call(code, {}, NullHost(authority=f"a/{sb_pid}"),
                                     CallLimits(deadline=10)) == marker.decode()
        assert early.state == "adopted" and driver.stats["started"] == 2
        kept = [p for p in Path(early.home.deno_dir).rglob("*.js") if marker in p.read_bytes()]
        assert kept == []


async def test_one_started_otherwise_is_not_adopted_and_ends_with_the_service() -> None:
    early = prestart(DenoSandbox(memory_mb=128))  # another heap cap: another command line
    async with DenoSandbox(prestarted=early, refill=False) as driver:
        await driver.warm()
        out = await driver.call(CODE, {"n": 2}, NullHost(), CallLimits(deadline=10))
        assert out == {"n": 2}
        assert early.popen.pid not in [sb.process.pid for sb in driver._all]
        assert early.state == "started" and alive(early.popen.pid)
    assert early.state == "closed" and not alive(early.popen.pid)
    assert not Path(early.home.tmp).exists()


async def test_one_started_with_another_environment_is_not_adopted() -> None:
    """The same command line with Deno's emit cache on (`process_env`): adopted on its
    command line alone, it kept each tool the driver's own spares do not in the DENO_DIR."""
    early = prestart(DenoSandbox(), emit_cache=True)
    async with DenoSandbox(prestarted=early, refill=False) as driver:
        await driver.warm()
        assert await driver.call(CODE, {"n": 3}, NullHost(), CallLimits(deadline=10)) == {"n": 3}
        assert early.popen.pid not in [sb.process.pid for sb in driver._all]
        assert early.state == "started"
    assert early.state == "closed" and not alive(early.popen.pid)


def test_one_nobody_took_is_closed_whole_and_once() -> None:
    early = prestart(DenoSandbox())
    pipes = early.pipes
    early.close()
    assert early.state == "closed" and early.popen.returncode is not None  # killed, reaped
    assert not Path(early.home.tmp).exists()
    for fd in pipes:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} left open")
    early.close()


async def test_a_service_closed_before_its_first_start_kills_it() -> None:
    early = prestart(DenoSandbox())
    driver = DenoSandbox(prestarted=early, spares=0)
    async with driver:
        await trio.sleep(0)
    assert early.state == "closed" and not alive(early.popen.pid)
    assert not Path(early.home.tmp).exists()


async def test_one_trio_would_not_take_is_killed_and_the_driver_starts_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Adopting goes through trio's private `Process._create`: if it refuses (its signature
    changed, say), the process started ahead is killed and reaped, our ends of its pipes are
    closed, and the driver starts its first spare itself, in the same home."""
    early = prestart(DenoSandbox())
    ours = [os.fstat(fd).st_ino for fd in early.pipes]
    create = trio.Process._create  # type: ignore[attr-defined]

    def refused(popen: object, *streams: object) -> trio.Process:
        # (only the adoption: the driver's own processes, and the Deno that makes a cache
        # template meanwhile, are made by `open_process`, through the same constructor)
        if popen is early.popen:
            raise TypeError("Process._create() takes other arguments now")
        return create(popen, *streams)

    monkeypatch.setattr(trio.Process, "_create", refused, raising=False)
    async with DenoSandbox(prestarted=early, refill=False) as driver:
        await driver.warm()
        assert early.state == "closed" and not alive(early.popen.pid)
        out = await driver.call(CODE, {"n": 3}, NullHost(), CallLimits(deadline=10))
        assert out == {"n": 3}
        assert early.popen.pid not in [sb.process.pid for sb in driver._all]
        assert driver._tmp == early.home.tmp
    for fd, pipe in zip(early.pipes, ours, strict=True):  # (the number may be reused)
        with contextlib.suppress(OSError):
            assert os.fstat(fd).st_ino != pipe, f"fd {fd} left open"
    assert not Path(early.home.tmp).exists()
