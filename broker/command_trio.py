"""How a command of the CLI runs trio: `run_command`, `trio.run` with Ctrl-C raised only at a
checkpoint of the main task.

By default trio raises KeyboardInterrupt wherever the signal finds the main thread: in the
middle of the kernel's synchronous work (between a store's COMMIT and the move of the chain's
head it made, so the next append repeats a sequence number and the store refuses every write
after it), or in a task of a sandbox service a system task owns (an exception there is a
TrioInternalError). Raised at a checkpoint of the main task instead, the Ctrl-C cancels
the run the way any error does: nothing is half done, and the command ends with 130."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


def run_command(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`trio.run(async_fn, *args)`, a Ctrl-C delivered at the main task's next checkpoint.

    A run that failed while a Ctrl-C was still pending ends with trio's bare
    KeyboardInterrupt, the failure only its `__context__`: raised here as a group of both, so
    the CLI reports the failure (`broker.cli_errors.typed_errors`) instead of a lone 130."""
    ended: list[BaseException] = []

    async def main() -> T:
        try:
            return await async_fn(*args)
        except BaseException as exc:
            ended.append(exc)
            raise

    try:
        return trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
    except KeyboardInterrupt as ki:
        if ended and ended[0] is not ki and ki.__context__ is ended[0]:
            raise BaseExceptionGroup("a Ctrl-C beside a failure", [ki, ended[0]]) from None
        raise


def uninterrupted(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` whole, for a command's synchronous store work outside any trio run (a
    store that a command opens as a writer: its COMMIT and the move of the chain's head, the
    anchor signed at its close): a Ctrl-C meanwhile is held by trio's handler and raised once
    `fn` has returned, not between two of its statements. Inside a trio run already (a
    program that calls the CLI's `main` from one), that run's handler holds it: the store's
    code is marked (`broker.store.ctrl_c`)."""
    if trio.lowlevel.in_trio_run():
        return fn(*args)

    async def call() -> T:
        return fn(*args)

    return run_command(call)
