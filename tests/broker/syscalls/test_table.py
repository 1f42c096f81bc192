"""The one syscall table, and bad input through it: every refusal is typed and audited, and
the broker keeps serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel, LimitExceeded, NotCapable
from broker.errors import ERRORS
from broker.syscalls import TABLE, describe
from tests.conftest import open_image


def test_table_describes_every_primitive() -> None:
    described = {d["name"]: d for d in describe()}
    assert set(described) == set(TABLE)
    assert described["fs.read"]["right"] == "fs:read"
    assert described["proc.self"]["right"] is None
    assert described["clock.sleep"]["blocking"] is True
    for entry in described.values():
        assert entry["schema"]["type"] == "object"
        assert entry["schema"]["additionalProperties"] is False


def test_every_builtin_schema_compiles() -> None:
    # Compiled at first use (`LazySchema`): a broken built-in schema must fail here, not at
    # some tool's first call of that syscall.
    for spec in TABLE.values():
        spec.validator.compiled()  # type: ignore[union-attr]


def test_importing_the_kernel_compiles_no_syscall_schema() -> None:
    # Every process that imports the kernel (each CLI command, the demo's two brokers) paid
    # for compiling the whole table, most of which it never uses.
    code = ("import broker.kernel, broker.syscalls.table as t\n"
            "print(sum(s.validator._compiled is not None for s in t.TABLE.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "0"


async def _host_process(kernel: Kernel) -> tuple[int, object]:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/**:read,write", "clock:*:read"])
    return pid, kernel.process(pid)


@pytest.mark.parametrize(("name", "args", "error"), [
    ("no.such.call", {}, NotCapable),
    ("fs.read", {"path": 42}, InvalidArgument),
    ("fs.read", {}, InvalidArgument),
    ("fs.read", {"path": "/x", "extra": 1}, InvalidArgument),
    ("fs.read", ["not", "a", "map"], InvalidArgument),
    ("fs.read", {"path": "/x", "offset": -1}, InvalidArgument),
    ("clock.sleep", {"seconds": "soon"}, InvalidArgument),
    ("proc.signal", {"pid": 1, "signal": "nuke"}, InvalidArgument),
    ("fs.write", {"path": "/x", "data": {"not": "bytes"}}, InvalidArgument),
])
async def test_bad_syscalls_are_typed_and_audited(kernel: Kernel, name: str, args: object,
                                                  error: type[Exception]) -> None:
    pid, proc = await _host_process(kernel)
    before = len(kernel.audit(pid))
    with pytest.raises(error):
        await kernel.dispatcher.run(proc, None, name, args)  # type: ignore[arg-type]
    records = kernel.audit(pid)[before:]
    assert records, "a refused syscall leaves an audit record"
    assert records[-1]["detail"]["error"] == error.code  # type: ignore[attr-defined]
    # ... and the broker goes on serving the same process.
    assert isinstance(await kernel.call_tool(pid, "now", {}), float)


async def test_unknown_syscall_name_is_bounded_in_the_audit(kernel: Kernel) -> None:
    pid, proc = await _host_process(kernel)
    with pytest.raises(NotCapable):
        kernel.dispatcher.run_now(proc, None, "x" * 100_000, {})  # type: ignore[arg-type]
    assert len(kernel.audit(pid)[-1]["syscall"]) <= 64


async def test_per_call_syscall_cap(db_path: object) -> None:
    from broker import CallLimits

    async with Kernel.open(db_path, call_limits=CallLimits(max_syscalls=3)) as kernel:
        pid, proc = await _host_process(kernel)
        from broker.kernel.invocation import Invocation

        inv = Invocation.start(1, pid, "t", None, None, kernel.call_limits)
        for _ in range(3):
            kernel.dispatcher.run_now(proc, inv, "clock.now", {})  # type: ignore[arg-type]
        with pytest.raises(LimitExceeded):
            kernel.dispatcher.run_now(proc, inv, "clock.now", {})  # type: ignore[arg-type]


def test_error_codes_are_the_architecture_set() -> None:
    assert set(ERRORS) == {"NOT_CAPABLE", "APPROVAL_DENIED", "INVALID_ARGUMENT",
                           "LIMIT_EXCEEDED", "PROTOCOL_ERROR", "SANDBOX_CRASHED", "NOT_FOUND",
                           "CONFLICT", "CANCELLED", "TOOL_FAILED"}
