"""A Ctrl-C (a real SIGINT, through trio's own handler) raised at a chosen line, in a process
of its own (trio installs its handler only in a main thread whose SIGINT handler is Python's
default): `python -m tests.broker.kernel.ctrl_c_scenarios SCENARIO DIR`. Prints one JSON line
of what happened; `test_ctrl_c` reads it."""

from __future__ import annotations

import inspect
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import trio


def line_of(fn: Any, text: str) -> tuple[CodeType, int]:
    """`fn`'s code and the number of its line that holds `text`."""
    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, f"{text!r} in {fn.__qualname__}: {hits}"
    return fn.__code__, hits[0]


@contextmanager
def ctrl_c_at(code: CodeType, line: int) -> Iterator[list[bool]]:
    """SIGINT raised once, when `code` reaches `line`; yields [whether trio saw that code
    protected from KeyboardInterrupt] once it has."""
    fired: list[bool] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == line and not fired:
            fired.append(trio.lowlevel.currently_ki_protected())
            signal.raise_signal(signal.SIGINT)
        return local

    def each_call(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(each_call)
    try:
        yield fired
    finally:
        sys.settrace(None)


def outcome(fn: Any, *args: Any, restrict: bool = False) -> str:
    """What `trio.run(fn, *args)` ended with: "returned", or the name of what it raised
    (a group's only leaf, unwrapped)."""
    try:
        trio.run(fn, *args, restrict_keyboard_interrupt_to_checkpoints=restrict)
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return type(exc).__name__
    return "returned"


def after_a_commit(where: Path) -> dict[str, Any]:
    """A kernel's store appends a record; the Ctrl-C comes right after its COMMIT, before the
    chain's head moves in memory. The next append, the kernel's close and a reopen follow."""
    from broker import Kernel
    from broker.store import SQLiteStore
    from broker.store.chain import AuditChain

    code, line = line_of(AuditChain.append_audit, "self._move_head(head)  # after the commit")
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with Kernel.open(where / "k.db") as kernel:
            await _two_appends(kernel.store, code, line, seen)

    seen["run"] = outcome(main)
    _read_back(SQLiteStore(where / "k.db", writer=False), seen)
    return seen


async def _two_appends(store: Any, code: CodeType, line: int, seen: dict[str, Any]) -> None:
    """Two probe records appended, a Ctrl-C at `line` of `code` in the first; then a wait
    (where the Ctrl-C lands when the store's code is protected)."""
    from broker.store.audit import AuditRecord

    with ctrl_c_at(code, line) as fired:
        try:
            seen["first"] = store.append_audit(AuditRecord("event", "probe.first"))
        except KeyboardInterrupt:
            seen["landed inside"] = True
            raise
    seen["protected"] = fired
    seen["second"] = store.append_audit(AuditRecord("event", "probe.second"))
    await trio.sleep(30)  # the Ctrl-C: here


def _read_back(store: Any, seen: dict[str, Any]) -> None:
    """What the store (opened read-only) says of its chain and which probes it holds."""
    try:
        seen["records"], problems = store.audit_problems()
        seen["problems"] = [str(p) for p in problems]
        seen["probes"] = [s.record.syscall for s in store.audit_records()
                          if s.record.syscall.startswith("probe.")]
    finally:
        store.close()


def store_alone_after_a_commit(where: Path) -> dict[str, Any]:
    """`after_a_commit` without a kernel: a program's own `trio.run` (trio's default Ctrl-C)
    opens a store alone, as the store-only commands and an embedder do, appends and closes it
    (signing the anchor at the head it holds)."""
    from broker.store.chain import AuditChain
    from broker.store.opening import open_store

    code, line = line_of(AuditChain.append_audit, "self._move_head(head)  # after the commit")
    seen: dict[str, Any] = {}

    async def main() -> None:
        store = open_store(where / "s.db")
        try:
            await _two_appends(store, code, line, seen)
        finally:
            store.close()

    seen["run"] = outcome(main)
    _read_back(open_store(where / "s.db", writer=False), seen)
    return seen


def cli_store_only_after_a_commit(where: Path) -> dict[str, Any]:
    """`libos audit --rotate-key --db`, a command that opens a store alone, as its writer, in
    no trio run (trio's handler is not there: Python raises KeyboardInterrupt at any line): the
    Ctrl-C comes right after the COMMIT of the rotation's record. What the store then says of
    itself, beside what the same command without a Ctrl-C leaves."""
    import contextlib
    import io

    from broker import cli
    from broker.store import keys
    from broker.store.chain import AuditChain
    from broker.store.opening import open_store

    code, line = line_of(AuditChain.append_audit, "self._move_head(head)  # after the commit")
    seen: dict[str, Any] = {}
    for case in ("interrupted", "whole"):
        key, db = str(where / f"{case}.key"), str(where / f"{case}.db")
        open_store(db, audit_key=key).close()
        argv = ["audit", "--rotate-key", "--key", key, "--db", db]
        with contextlib.redirect_stdout(io.StringIO()):
            if case == "interrupted":
                with ctrl_c_at(code, line) as fired:
                    seen["exit"] = cli.main(argv)
                seen["fired"] = len(fired)
            else:
                cli.main(argv)
        store = open_store(db, writer=False)
        try:
            count, problems = store.audit_problems(public_key=keys.read_public(key + ".pub"))
            seen[case] = {"records": count, "problems": [str(p) for p in problems]}
        finally:
            store.close()
    return seen


def in_a_sandbox_service(where: Path) -> dict[str, Any]:
    """A Deno sandbox's service, started by a call (no `async with`: a system task owns it);
    the Ctrl-C comes inside one of its tasks."""
    from sandboxes.deno import DenoSandbox

    code, line = line_of(DenoSandbox._watchdog, "now = trio.current_time()")
    seen: dict[str, Any] = {}

    async def main() -> None:
        sandbox = DenoSandbox(spares=0)
        with ctrl_c_at(code, line) as fired:
            await sandbox.warm()
            await trio.sleep(30)  # the Ctrl-C: here at the latest
        seen["fired"] = fired

    seen["run"] = outcome(main)
    return seen


def between_two_statements(where: Path) -> dict[str, Any]:
    """A CLI command's run (`run_command`): a SIGINT between two statements of the main task
    raises nothing there; it comes at the next checkpoint."""
    from broker.command_trio import run_command

    reached: list[str] = []

    async def main() -> None:
        signal.raise_signal(signal.SIGINT)
        reached.append("the next statement")
        await trio.sleep(30)
        reached.append("past the checkpoint")

    try:
        run_command(main)
        ended = "returned"
    except KeyboardInterrupt:
        ended = "KeyboardInterrupt"
    return {"run": ended, "reached": reached}


def beside_a_real_failure(where: Path) -> dict[str, Any]:
    """A sandbox service a system task owns ends with a Ctrl-C and a real failure together
    (one group: the Ctrl-C landed in one of its tasks while another failed): the Ctrl-C
    reaches the main task, and the failure is logged, as one alone is."""
    import logging

    from sandboxes.deno import DenoSandbox

    logged: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(f"{record.getMessage()}: {record.exc_info and record.exc_info[1]!r}")

    logging.getLogger("libos.sandboxes.deno").addHandler(Kept())

    class Failing(DenoSandbox):  # the service's tasks: one failed, one took the Ctrl-C
        async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            raise BaseExceptionGroup("the service", [
                KeyboardInterrupt(), OSError(28, "No space left on device")])

    async def main() -> None:
        trio.lowlevel.spawn_system_task(Failing(spares=0)._system_serve, trio.Event())
        await trio.sleep(30)  # the Ctrl-C: here

    return {"run": outcome(main), "logged": logged}


def _failing_command(shape: str) -> Any:
    """A CLI command's run (`run_command`) in which a Ctrl-C comes while a task fails (its
    disk full): `alone` (nothing fails), `in_a_task` (the failure is a cleanup the Ctrl-C's
    cancellation ran: one group of both), `at_the_end` (the failure ends the run first, the
    Ctrl-C still pending: trio's bare KeyboardInterrupt), `typed` (as `in_a_task`, a typed
    error), `broken_pipe` (as `in_a_task`, another pipe than stdout's broken)."""
    from broker import NotFound
    from broker.command_trio import run_command

    async def task() -> None:
        signal.raise_signal(signal.SIGINT)
        if shape == "at_the_end":
            raise OSError(28, "No space left on device")
        try:
            await trio.sleep(30)
        finally:
            if shape == "typed":
                raise NotFound("no process 9")
            if shape == "in_a_task":
                raise OSError(28, "No space left on device")
            if shape == "broken_pipe":  # a peer's pipe, not stdout's (its reader is there)
                raise BrokenPipeError(32, "Broken pipe")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
            await trio.sleep(30)

    def command(args: Any, console: Any) -> int:
        run_command(main)
        return 0

    return command


def cli_failure_beside_ctrl_c(where: Path) -> dict[str, Any]:
    """`libos ps`, its run replaced by each shape of `_failing_command`, through the CLI's own
    `main`: its exit status and what it said on stderr, per shape."""
    import io
    from contextlib import redirect_stderr

    from broker import cli

    seen: dict[str, Any] = {}
    for shape in ("alone", "in_a_task", "at_the_end", "typed", "broken_pipe"):
        cli.COMMANDS["ps"] = _failing_command(shape)
        with redirect_stderr(io.StringIO()) as err:
            code = cli.main(["ps", "--db", str(where / "cli.db")])
        seen[shape] = {"exit": code, "stderr": err.getvalue()}
    return seen


def cli_ctrl_c_while_a_module_compiles(where: Path) -> dict[str, Any]:
    """A terminal's Ctrl-C (SIGINT to the whole foreground process group, this scenario its
    leader) while a command compiles a module too large to compile in the broker, in a child
    (`wasm_compile.compile_in_child`): its exit status and what it said on stderr."""
    import io
    import os
    import threading
    from contextlib import redirect_stderr

    import wasmtime

    from broker import cli
    from broker.command_trio import run_command
    from sandboxes.wasm_compile import compile_in_child, is_small
    from sandboxes.wasm_config import engine_config
    from tests.sandboxes.test_wasm_compile import many_locals

    wasm = many_locals(1, 50_000)
    assert not is_small(wasm)
    engine = wasmtime.Engine(engine_config(1 << 20))
    sent: list[int] = []

    def children() -> list[str]:
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as listed:
                found += listed.read().split()
        return found

    def in_a_session_of_its_own(pid: str) -> bool:
        # (between its fork and its setsid the child is still in this group: a SIGINT then
        # is a Ctrl-C before the compile began, not during it)
        try:
            return os.getsid(int(pid)) != os.getsid(0)
        except ProcessLookupError:
            return False

    def ctrl_c_once_a_child_runs() -> None:
        while not ((found := children()) and in_a_session_of_its_own(found[0])):
            threading.Event().wait(0.005)
        sent.append(int(found[0]))
        os.killpg(os.getpgrp(), signal.SIGINT)  # what the terminal does

    async def compiling() -> None:
        threading.Thread(target=ctrl_c_once_a_child_runs, daemon=True).start()
        await trio.to_thread.run_sync(partial(compile_in_child, engine, wasm,
                                              max_wasm_stack=1 << 20, seconds=20))
        await trio.sleep(30)  # (compiled before the Ctrl-C came: it comes here)

    def command(args: Any, console: Any) -> int:
        run_command(compiling)
        return 0

    cli.COMMANDS["ps"] = command
    with redirect_stderr(io.StringIO()) as err:
        code = cli.main(["ps", "--db", str(where / "cli.db")])
    return {"exit": code, "stderr": err.getvalue(), "sent": len(sent)}


SCENARIOS = {"after_a_commit": after_a_commit,
             "store_alone_after_a_commit": store_alone_after_a_commit,
             "cli_store_only_after_a_commit": cli_store_only_after_a_commit,
             "in_a_sandbox_service": in_a_sandbox_service,
             "between_two_statements": between_two_statements,
             "beside_a_real_failure": beside_a_real_failure,
             "cli_failure_beside_ctrl_c": cli_failure_beside_ctrl_c,
             "cli_ctrl_c_while_a_module_compiles": cli_ctrl_c_while_a_module_compiles}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))), flush=True)
