"""Per-process concurrency bounds on shell.run and net.fetch (issue 20, item 6), with real
subprocesses and a real HTTP server on loopback: calls beyond the bound wait for a slot, or
fail with `LimitExceeded` (audited) at their deadline; other processes are not held up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import CallLimits, Kernel, LimitExceeded, ProcessLimits
from tests.broker.syscalls.test_net import Server, response
from tests.broker.syscalls.test_net import server as server  # the fixture
from tests.conftest import ALL_BUILTINS, open_image

NEEDS = ("shell:*:run", "net:*:fetch", "fs:/**:read,write")


async def _proc(kernel: Kernel, *caps: str) -> int:
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command", "fetch"))
    return kernel.spawn("agent", caps=list(caps))


def sleeping_children(seconds: str) -> int:
    """Live children of this process running `sleep SECONDS`."""
    me, count = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if (int(fields[1]) == me and fields[0] != "Z" and argv[0].endswith(b"sleep")
                and argv[1:2] == [seconds.encode()]):
            count += 1
    return count


async def test_shell_runs_beyond_the_bound_wait_for_a_slot(db_path: Path) -> None:
    async with Kernel.open(db_path, process_limits=ProcessLimits(shell=3)) as kernel:
        pid = await _proc(kernel, "shell:*:run")
        other = await _proc(kernel, "shell:*:run")
        peak = 0
        results: list[int] = []

        async def one() -> None:
            out = await kernel.call_tool(pid, "run_command", {"argv": ["sleep", "0.3"]})
            results.append(out["exit_code"])

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sleeping_children("0.3"))
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as calls:
                for _ in range(12):
                    calls.start_soon(one)
                await trio.sleep(0.1)
                # another process has slots of its own: not queued behind the first
                with trio.fail_after(1.5):
                    out = await kernel.call_tool(other, "run_command", {"argv": ["true"]})
                assert out["exit_code"] == 0
            nursery.cancel_scope.cancel()
        assert results == [0] * 12
        assert 2 <= peak <= 3  # in parallel, never past the bound (polled: 2 on a busy box)


async def test_a_shell_run_with_no_slot_by_its_deadline_fails(db_path: Path) -> None:
    async with Kernel.open(db_path, call_limits=CallLimits(deadline=1.0),
                           process_limits=ProcessLimits(shell=1)) as kernel:
        pid = await _proc(kernel, "shell:*:run")
        outcomes: list[Any] = []

        async def hold() -> None:
            outcomes.append(await kernel.call_tool(pid, "run_command",
                                                   {"argv": ["sleep", "2.5"]}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await trio.sleep(0.3)
            start = trio.current_time()
            with pytest.raises(LimitExceeded, match=r"no shell\.run slot free"):
                await kernel.call_tool(pid, "run_command", {"argv": ["echo", "late"]})
            assert 0.4 < trio.current_time() - start < 1.5
        assert outcomes[0]["exit_code"] == 0
        late = [r for r in kernel.audit(pid) if r["syscall"] == "shell.run"
                and r["resource"] == "echo late"]
        assert [r["phase"] for r in late] == ["intent", "outcome"]
        assert late[1]["detail"]["error"] == "LIMIT_EXCEEDED"
        # the slot is free again once the holder is done
        assert (await kernel.call_tool(pid, "run_command",
                                       {"argv": ["echo", "now"]}))["stdout"] == "now\n"


async def test_fetches_beyond_the_bound_wait_for_a_slot(db_path: Path,
                                                        server: Server) -> None:
    in_flight = peak = 0

    async def slow(request: dict[str, Any]) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.2)
        in_flight -= 1
        return response(body=b"slow")

    server.routes["/slow"] = slow
    async with Kernel.open(db_path, process_limits=ProcessLimits(fetch=2)) as kernel:
        pid = await _proc(kernel, f"net:GET {server.base}/*:fetch")
        bodies: list[str] = []

        async def one() -> None:
            out = await kernel.call_tool(pid, "fetch", {"url": f"{server.base}/slow"})
            bodies.append(out["body"])

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
    assert bodies == ["slow"] * 8
    assert peak == 2
