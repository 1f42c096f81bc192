"""A registration whose commit fails is undone: memory follows the store.

Registering a tool commits its intent, then its rows (the source, the tool's row) with its
outcome. When that second commit fails, the caller hears a `Conflict`; the tool must not stay
callable in memory while the store never gets its row (or gets it later, after the caller
was told it failed). Real SQLite and PostgreSQL, a trigger refusing `process_tools` inserts
while a switch is on (`tests/broker/kernel/faulty_store.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import pytest

from broker import AgentImage, Conflict, Kernel, NotFound
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from tests.broker.kernel.faulty_store import Fault

NIL = wasm_guest.tool(
    '(func (export "run") (param $args i32) (param $len i32) (result i64)\n'
    '  (call $ret_begin) (call $mp_nil) (call $ret_end))')
TRUE = wasm_guest.tool(
    '(func (export "run") (param $args i32) (param $len i32) (result i64)\n'
    '  (call $ret_begin) (call $mp_bool (i32.const 1)) (call $ret_end))')


def _kernel(store_at: Path | str, tmp_path: Path) -> Kernel:
    return Kernel.open(store_at, fs_root=tmp_path / "fs",  # type: ignore[return-value]
                       sandboxes=[WasmSandbox(tmp_path / "cache")])


async def _registered(kernel: Kernel, pid: int, name: str, source: str, **more: object
                      ) -> dict[str, object]:
    return await kernel.call_tool(pid, "register_tool",
                                  {"name": name, "lang": "wat", "source": source, **more})


async def _registrar_with(kernel: Kernel, name: str) -> int:
    """A process that may register WAT tools, with one registered as `name`."""
    await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                           needs=("tool:*:register,call",)))
    pid = kernel.spawn("reg", caps=["tool:wat:register"])
    await _registered(kernel, pid, name, NIL)
    return pid


async def _refused(store_at: Path | str, registering: Awaitable[object]) -> Conflict:
    """The `Conflict` a registration's caller hears when the store refuses its tool's row."""
    with Fault(store_at) as fault:
        fault.install("process_tools")
        fault.set(True)
        with pytest.raises(Conflict) as told:
            await registering
        fault.set(False)
    return told.value


async def test_a_registration_whose_commit_fails_is_not_callable_nor_stored(
        store_at: Path | str, tmp_path: Path) -> None:
    async with _kernel(store_at, tmp_path) as kernel:
        pid = await _registrar_with(kernel, "good")
        told = await _refused(store_at, _registered(kernel, pid, "bad", NIL))
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "bad", {})
        assert "'bad' is not registered (taken back)" in told.message
        assert "bad" not in {t["name"] for t in kernel.list_tools(pid)}
        # the neighbours: the tool registered before, and one registered after, work
        assert await kernel.call_tool(pid, "good", {}) is None
        await _registered(kernel, pid, "after", NIL)
        assert await kernel.call_tool(pid, "after", {}) is None
        assert set(kernel.store.process_tools(pid)) == {"good", "after"}
    async with _kernel(store_at, tmp_path) as kernel:  # the store says the same
        assert set(kernel.store.process_tools(pid)) == {"good", "after"}
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "bad", {})
        assert kernel.verify_audit()[1] == []


async def test_a_replacement_whose_commit_fails_leaves_the_tool_it_replaced(
        store_at: Path | str, tmp_path: Path) -> None:
    async with _kernel(store_at, tmp_path) as kernel:
        pid = await _registrar_with(kernel, "t")
        await _refused(store_at, _registered(kernel, pid, "t", TRUE, replace=True))
        assert await kernel.call_tool(pid, "t", {}) is None  # the old code, as stored
    async with _kernel(store_at, tmp_path) as kernel:
        assert await kernel.call_tool(pid, "t", {}) is None
        assert kernel.verify_audit()[1] == []
