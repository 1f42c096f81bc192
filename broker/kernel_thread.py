"""The kernel for programs that do not run trio: `KernelThread` runs a `Kernel` in a thread of
its own (one `trio.run`) and reaches its methods from any other thread, blocking, or from
asyncio, awaitable.

    with KernelThread("app.db") as kernel:                 # plain Python: calls block
        pid = kernel.spawn("notes", caps=["fs:/notes/**:read"])
        kernel.call_tool(pid, "read_file", {"path": "/notes/todo.txt"})

    async with KernelThread("app.db") as kernel:           # asyncio: `a` + the method's name
        await kernel.acall_tool(pid, "read_file", {"path": "/notes/todo.txt"})

`kernel.X(...)` runs `Kernel.X(...)` in the kernel's thread and waits for it (a coroutine is
awaited there); `await kernel.aX(...)` does the same without blocking the event loop. Nothing
is wrapped method by method, so a method added to `Kernel` is reached as it is, and
`run_in_kernel(fn)` runs any `fn(kernel)` there (for what is not a plain call, e.g. a
decorator). The kernel is not thread-safe: everything touches it in its own thread only.

An error comes out as itself (`NotCapable`, not an ExceptionGroup). Closing (the end of the
block, also when it raises) cancels the calls still running (they raise `Cancelled`), closes
the kernel and the sandboxes it opened, and joins the thread (a kernel the program never
closes is closed when the interpreter exits). A call hands over with
`TrioToken.run_sync_soon` and its outcome comes back through a concurrent future (blocking)
or `call_soon_threadsafe` (asyncio): one hop each way, cheaper than a thread of the pool per
call (`asyncio.to_thread`); both are measured in `bench/embed_bench.py`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import outcome
import trio

from broker.errors import Cancelled
from broker.kernel import Kernel
from sandboxes.base import Sandbox

Report = Callable[[outcome.Outcome[Any]], None]  # called in the kernel's thread, once
NOT_REACHED = frozenset({"open"})  # opening is the front's own job


def _kernel_attr(name: str) -> Any:
    if name.startswith("_") or name in NOT_REACHED:
        return None
    return inspect.getattr_static(Kernel, name, None)


def _alone(exc: BaseException) -> BaseException:
    """An error inside nurseries that hold nothing else comes out as itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class KernelThread:
    """A kernel in a thread of its own. `sandboxes` are handed to `Kernel.open` (unentered
    ones open on first use), or an async context manager that opens them in the kernel's
    thread, e.g. `open_sandboxes(Path("work"))`; `options` are `Kernel.open`'s."""

    def __init__(self, path: str | Path = "libos.db", *,
                 sandboxes: Iterable[Sandbox] | AbstractAsyncContextManager[Iterable[Sandbox]]
                 = (), **options: Any) -> None:
        self._path = path
        self._sandboxes = sandboxes
        self._options = options
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._kernel: Kernel | None = None
        self._calls: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._closing = False  # read and written in the kernel's thread only
        self._error: BaseException | None = None  # how the kernel's run ended, for close()

    # -- opening and closing ---------------------------------------------------------------

    def start(self) -> Self:
        """Open the kernel in a new thread; returns once it is open (or raises why not)."""
        if self._thread is not None:
            raise RuntimeError("this KernelThread was already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name=f"libos-kernel {self._path}")
        self._thread.start()
        try:
            started.result()
        except BaseException:
            self._thread.join()
            raise
        atexit.register(self.close)  # one the program forgets is still closed, at its exit
        return self

    def close(self) -> None:
        """Cancel the calls still running, close the kernel, join its thread. Raises what
        ended the kernel's run, if it failed. Closing twice is a no-op."""
        thread, token = self._thread, self._token
        if thread is None:
            return
        self._not_in_kernel_thread()
        atexit.unregister(self.close)
        if token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._request_stop)
        thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:  # cancelled while opening: close what opened
            await asyncio.gather(starting, return_exceptions=True)
            await asyncio.to_thread(self.close)
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.shield(asyncio.to_thread(self.close))

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            trio.run(self._serve, started)
        except BaseException as exc:
            if started.done():
                self._error = _alone(exc)
            else:
                started.set_exception(_alone(exc))

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._stop = trio.Event()
        async with AsyncExitStack() as stack:
            sandboxes = self._sandboxes
            if isinstance(sandboxes, AbstractAsyncContextManager):
                sandboxes = await stack.enter_async_context(sandboxes)
            kernel = await stack.enter_async_context(
                Kernel.open(self._path, sandboxes=sandboxes, **self._options))
            try:
                async with trio.open_nursery() as calls:
                    self._kernel, self._calls = kernel, calls
                    self._token = trio.lowlevel.current_trio_token()
                    started.set_result(None)
                    await self._stop.wait()
                    calls.cancel_scope.cancel()
            finally:
                self._closing = True  # before the nursery may take no more calls

    def _request_stop(self) -> None:
        self._closing = True
        assert self._stop is not None
        self._stop.set()

    # -- calls -------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """`kernel.X`: a blocking `Kernel.X`, or its value for a property; `kernel.aX`: an
        awaitable `Kernel.X` for asyncio."""
        found = _kernel_attr(name)
        if found is not None and callable(found):
            call = functools.update_wrapper(functools.partial(self._call, name), found)
        elif found is not None:
            return self.run_in_kernel(lambda kernel: getattr(kernel, name))
        elif name.startswith("a") and callable(found := _kernel_attr(name[1:])):
            call = functools.update_wrapper(functools.partial(self._acall, name[1:]), found)
        else:
            raise AttributeError(f"{type(self).__name__} reaches no Kernel method {name!r}")
        self.__dict__[name] = call  # found once; later lookups skip __getattr__
        return call

    def _call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return self.run_in_kernel(lambda kernel: getattr(kernel, name)(*args, **kwargs))

    async def _acall(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return await self.arun_in_kernel(lambda kernel: getattr(kernel, name)(*args, **kwargs))

    def run_in_kernel(self, fn: Callable[[Kernel], Any]) -> Any:
        """Run `fn(kernel)` in the kernel's thread (awaiting what it returns, if awaitable)
        and wait for its result; an error comes out as itself."""
        self._not_in_kernel_thread()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        scope = trio.CancelScope()
        self._submit(fn, scope, functools.partial(_settle_future, done))
        try:
            return done.result()
        except BaseException:
            if not done.done():  # the caller stopped waiting (Ctrl-C): the call stops too
                self._cancel(scope)
            raise

    async def arun_in_kernel(self, fn: Callable[[Kernel], Any]) -> Any:
        """`run_in_kernel` for asyncio: the event loop keeps running while the kernel works;
        cancelling the awaiting task cancels the call."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        scope = trio.CancelScope()
        self._submit(fn, scope, functools.partial(_settle_asyncio, loop, done))
        try:
            return await done
        except asyncio.CancelledError:
            self._cancel(scope)
            raise

    def _submit(self, fn: Callable[[Kernel], Any], scope: trio.CancelScope,
                report: Report) -> None:
        if self._token is None:
            raise Cancelled("the kernel is not open (start it, or use `with`)")
        try:
            self._token.run_sync_soon(self._begin, fn, scope, report)
        except trio.RunFinishedError:
            raise Cancelled("the kernel is closed") from None

    def _cancel(self, scope: trio.CancelScope) -> None:
        if self._token is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(scope.cancel)

    def _begin(self, fn: Callable[[Kernel], Any], scope: trio.CancelScope,
               report: Report) -> None:
        """In the kernel's thread, from its run loop: must never raise."""
        if self._closing or self._kernel is None or self._calls is None:
            report(outcome.Error(Cancelled("the kernel is closed")))
            return
        result = outcome.capture(fn, self._kernel)
        if isinstance(result, outcome.Value) and inspect.isawaitable(result.value):
            self._calls.start_soon(self._finish, result.value, scope, report)
        else:
            report(result)

    async def _finish(self, awaitable: Awaitable[Any], scope: trio.CancelScope,
                      report: Report) -> None:
        with scope:
            result = await outcome.acapture(_wait, awaitable)
        if isinstance(result, outcome.Error) and isinstance(result.error, trio.Cancelled):
            why = "the kernel closed" if self._closing else "its caller stopped waiting"
            result = outcome.Error(Cancelled(f"the call was cancelled: {why}"))
        report(result)

    def _not_in_kernel_thread(self) -> None:
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("a KernelThread is called from its own kernel's thread (it "
                               "would wait for itself): use the Kernel there directly")


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _settle_future(done: concurrent.futures.Future[Any], result: outcome.Outcome[Any]) -> None:
    if isinstance(result, outcome.Error):
        done.set_exception(result.error)
    else:
        done.set_result(result.value)


def _settle_asyncio(loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any],
                    result: outcome.Outcome[Any]) -> None:
    def settle() -> None:
        if done.done():  # the awaiting task was cancelled
            return
        if isinstance(result, outcome.Error):
            done.set_exception(result.error)
        else:
            done.set_result(result.value)

    with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
