"""The kernel for programs that do not run trio (issue 12, item 4): `KernelThread` runs a real
kernel in its own thread; plain code calls it blocking, asyncio code awaits it. Errors come out
as themselves, closing cancels calls in flight (a sandboxed one included), closes the
sandboxes and leaves no thread and no child process behind, also when the caller's code
raises. The asyncio tests run under `asyncio.run`, where the trio kernel itself cannot
(`must be called from async context`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    AgentImage,
    Cancelled,
    InvalidArgument,
    Kernel,
    KernelThread,
    NotCapable,
    open_sandboxes,
)
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import LIMITS

COUNT_LINES = """
export default async function run(args: { path: string }, libos: any) {
  const text: string = await libos.fs.read(args.path);
  return { lines: text.split("\\n").length };
}"""
WRITE_OUT = """
export default async function run(args: { data: string }, libos: any) {
  await libos.fs.write("/out/x.txt", args.data);
  return "written";
}"""
ASK_OUT = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
CAPS = ["fs:/data/**:read,write", "tool:ts:register", ASK_OUT]
IMAGE = AgentImage("app", tools=("write_file", "read_file", "register_tool"),
                   needs=["fs:/data/**:read,write", "fs:/out/**:write", "tool:ts:register"])


def kernel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("libos-kernel")]


def children() -> set[int]:
    """This process's child processes (of every thread)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            listed = (task / "children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile has no children
        found.update(int(p) for p in listed.split())
    return found


def until(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return found


def open_app(tmp_path: Path, **options: Any) -> KernelThread:
    (tmp_path / "app-fs" / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "app-fs" / "out").mkdir(exist_ok=True)
    return KernelThread(tmp_path / "app.db", call_limits=LIMITS, **options)


# -- plain code ---------------------------------------------------------------------------------

def test_plain_code_calls_a_real_kernel_and_its_sandboxes(tmp_path: Path) -> None:
    before = children()
    with open_app(tmp_path, sandboxes=open_sandboxes(tmp_path / "work", spares=0)) as kernel:
        assert [t.name for t in kernel_threads()] == [f"libos-kernel {tmp_path / 'app.db'}"]
        kernel.register_image(IMAGE)
        pid = kernel.spawn("app", caps=CAPS)
        assert kernel.live == [pid]  # a property, read in the kernel's thread
        kernel.call_tool(pid, "write_file", {"path": "/data/a.txt", "data": "1\n2\n3"})
        kernel.call_tool(pid, "register_tool", {
            "name": "count_lines", "lang": "ts", "source": COUNT_LINES,
            "schema": {"type": "object", "properties": {"path": {"type": "string"}}}})
        assert kernel.call_tool(pid, "count_lines", {"path": "/data/a.txt"}) == {"lines": 3}
        assert children() - before  # the Deno sandbox runs

        with pytest.raises(NotCapable) as denied:
            kernel.call_tool(pid, "count_lines", {"path": "/etc/passwd"})
        assert type(denied.value) is NotCapable  # as itself, not in an ExceptionGroup
        with pytest.raises(InvalidArgument):
            kernel.call_tool(pid, "count_lines", {"path": 7})
        [refused] = [r for r in kernel.audit(pid) if r["phase"] == "denied"]
        assert refused["syscall"] == "fs.read" and refused["resource"] == "/etc/passwd"
        assert kernel.verify_audit()[1] == []
    assert kernel_threads() == []
    until(lambda: not children() - before, timeout=10)  # its sandboxes are closed (reaped)
    with pytest.raises(Cancelled, match="closed"):
        kernel.ps()
    kernel.close()  # closing twice is nothing


def test_the_callers_error_closes_the_kernel_and_cancels_a_sandboxed_call(
        tmp_path: Path) -> None:
    """A call waits in a Deno tool for a person's approval in another thread; the caller's
    code raises. The error comes out as itself, the waiting call ends with `Cancelled`, the
    sandbox is closed with the kernel (it was handed in unentered) and no thread is left.
    (Unanswered requests expire in 20 s here: a close that waited for the call instead of
    cancelling it would fail with `ApprovalDenied`, not hang.)"""
    before = children()
    outcomes: list[BaseException | Any] = []

    def call(kernel: KernelThread, pid: int) -> None:
        try:
            outcomes.append(kernel.call_tool(pid, "write_out", {"data": "x"}))
        except BaseException as exc:
            outcomes.append(exc)

    with pytest.raises(ValueError, match="the caller's own") as raised, \
            open_app(tmp_path, sandboxes=[DenoSandbox(spares=0)], approval_timeout=20) as kernel:
        kernel.register_image(IMAGE)
        pid = kernel.spawn("app", caps=CAPS)
        kernel.call_tool(pid, "register_tool", {"name": "write_out", "lang": "ts",
                                                "source": WRITE_OUT})
        caller = threading.Thread(target=call, args=(kernel, pid))
        caller.start()
        [request] = until(kernel.approvals)
        assert request["syscall"] == "fs.write" and request["tool"] == "write_out"
        raise ValueError("the caller's own error")
    assert type(raised.value) is ValueError
    caller.join(timeout=30)
    assert not caller.is_alive()
    [cancelled] = outcomes
    assert type(cancelled) is Cancelled and "the kernel closed" in str(cancelled)
    assert not (tmp_path / "app-fs" / "out" / "x.txt").exists()
    assert kernel_threads() == []
    until(lambda: not children() - before, timeout=10)


def test_opening_fails_as_itself_and_leaves_no_thread(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(NotADirectoryError), KernelThread(blocked / "app.db"):
        pass
    assert kernel_threads() == []


def test_a_failure_in_the_openers_nursery_comes_out_as_itself(tmp_path: Path) -> None:
    @asynccontextmanager
    async def broken_sandboxes() -> AsyncIterator[list[Any]]:
        async with trio.open_nursery():
            raise OSError("no sandbox here")
        yield []  # pragma: no cover

    with pytest.raises(OSError, match="no sandbox here") as raised, \
            open_app(tmp_path, sandboxes=broken_sandboxes()):
        pass
    assert type(raised.value) is OSError
    assert kernel_threads() == []


def test_a_kernel_the_program_never_closes_is_closed_at_its_exit(tmp_path: Path) -> None:
    """The kernel's thread is a daemon (a forgotten kernel must not hang the program's exit),
    so an exit hook closes it: the store is closed cleanly (SQLite removes its WAL file only
    then) and what the program did is there."""
    script = tmp_path / "forgets.py"
    script.write_text(
        "from broker import AgentImage, KernelThread\n"
        "kernel = KernelThread('app.db').start()\n"
        "kernel.register_image(AgentImage('n', tools=('read_file',), needs=['fs:/**:read']))\n"
        "print(kernel.spawn('n', caps=['fs:/**:read']))\n")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "1\n", run.stderr
    assert not (tmp_path / "app.db-wal").exists()
    with KernelThread(tmp_path / "app.db") as kernel:
        assert [p["pid"] for p in kernel.ps()] == [1]
        assert kernel.verify_audit()[1] == []


def test_what_the_front_reaches(tmp_path: Path) -> None:
    kernel = open_app(tmp_path)
    with pytest.raises(Cancelled, match="not open"):
        kernel.ps()
    with kernel:
        assert kernel.call_tool.__doc__ == Kernel.call_tool.__doc__
        assert kernel.run_in_kernel(lambda k: type(k)) is Kernel
        for hidden in ("open", "_procs", "store", "no_such_method"):
            with pytest.raises(AttributeError):
                getattr(kernel, hidden)
        # From inside the kernel's thread it would wait for itself: refused, not a hang.
        with pytest.raises(RuntimeError, match="its own kernel's thread"):
            kernel.run_in_kernel(lambda k: kernel.ps())
        with pytest.raises(RuntimeError, match="already started"):
            kernel.start()
        assert kernel.ps() == []


# -- asyncio ------------------------------------------------------------------------------------

def test_asyncio_awaits_calls_and_approvals_while_its_loop_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_app(tmp_path) as kernel:
            assert len(kernel_threads()) == 1
            await kernel.aregister_image(IMAGE)
            pid = await kernel.aspawn("app", caps=CAPS)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticker = asyncio.create_task(tick())
            writing = asyncio.create_task(kernel.acall_tool(
                pid, "write_file", {"path": "/out/ok.txt", "data": "approved"}))
            async with asyncio.timeout(30):
                while not (pending := await kernel.aapprovals()):
                    await asyncio.sleep(0.01)
            seen = ticks
            await asyncio.sleep(0.05)
            assert ticks > seen  # the loop ran while the call waited in the kernel
            await kernel.aapprove(pending[0]["id"])
            assert (await writing) is not None
            ticker.cancel()
            assert (tmp_path / "app-fs" / "out" / "ok.txt").read_text() == "approved"

            await kernel.acall_tool(pid, "write_file", {"path": "/data/a.txt", "data": "a"})
            many = await asyncio.gather(*(kernel.acall_tool(
                pid, "read_file", {"path": "/data/a.txt"}) for _ in range(20)))
            assert many == ["a"] * 20
            with pytest.raises(NotCapable) as denied:
                await kernel.acall_tool(pid, "read_file", {"path": "/etc/passwd"})
            assert type(denied.value) is NotCapable
            assert (await kernel.averify_audit())[1] == []
        assert kernel_threads() == []

    asyncio.run(main())


def test_cancelled_while_opening_closes_what_opened(tmp_path: Path) -> None:
    async def main() -> None:
        kernel = open_app(tmp_path)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kernel.__aenter__(), 0.001)

    asyncio.run(main())
    assert kernel_threads() == []


def test_cancelling_the_awaiting_task_cancels_the_kernels_call(tmp_path: Path) -> None:
    """`asyncio.wait_for` gives up on a call waiting for approval: the call is cancelled in the
    kernel too, so its request is settled as cancelled (and audited), not left pending."""
    async def main() -> list[dict[str, Any]]:
        async with open_app(tmp_path) as kernel:
            await kernel.aregister_image(IMAGE)
            pid = await kernel.aspawn("app", caps=CAPS)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(kernel.acall_tool(
                    pid, "write_file", {"path": "/out/no.txt", "data": "x"}), 0.5)
            async with asyncio.timeout(30):
                while not (settled := await kernel.aapprovals("cancelled")):
                    await asyncio.sleep(0.01)
            assert await kernel.aapprovals() == []
            audit = await kernel.aaudit(pid)
            assert (await kernel.averify_audit())[1] == []
        return [*settled, *audit]

    settled, *audit = asyncio.run(main())
    assert settled["syscall"] == "fs.write" and settled["args"]["path"] == "/out/no.txt"
    [record] = [r for r in audit if r["phase"] == "admin"
                and r["detail"].get("request") == settled["id"]]
    assert record["detail"]["state"] == "cancelled"
    assert record["detail"]["message"].endswith("its call was cancelled")
    assert not (tmp_path / "app-fs" / "out" / "no.txt").exists()
    assert kernel_threads() == []
