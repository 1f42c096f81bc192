"""How the `libos` command reports what went wrong: one line, never a traceback.

A typed error is `CODE: message` on stderr, or under `--json` the object
`{"error": CODE, "message": ...}` on stdout (where a program reading JSON looks), and exit
status 2. A usage error is reported the same way. Log records of the broker's own modules
(a planner whose model API failed, a sandbox that could not start) are one line each on
stderr; `LIBOS_DEBUG=1` keeps their tracebacks for a developer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import NoReturn, TextIO

import trio
from rich.console import Console

from broker.errors import Cancelled, InvalidArgument, LibosError
from broker.render import inert

EXIT_ERROR = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, not bad input
EXIT_INTERRUPTED = 130
# What a shell reports for a program SIGPIPE ended (128 + 13): `libos demo | head` ends the
# way `yes | head` does, with no traceback and no error line.
EXIT_STDOUT_CLOSED = 141
LOGGER = "libos"  # the broker's loggers are libos.kernel, libos.sandboxes.deno, ...


class UsageError(Exception):
    """argparse refused the command line."""


class StdoutClosed(Exception):
    """Whoever read the command's output has gone (the reading end of its pipe closed)."""


class OutputConsole(Console):
    """The command's console on stdout: a closed stdout is `StdoutClosed` (rich's own answer
    is SystemExit(1), which a nursery would report as a crash)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        stdout_to_devnull()
        raise StdoutClosed


def flush_std_streams() -> None:
    """Flush stdout and stderr, those the process has (either is None when it was closed as
    the interpreter started)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def stdout_to_devnull() -> None:
    """Later writes (a flush at exit too) go nowhere instead of failing again."""
    _to_devnull(sys.stdout)


def _to_devnull(stream: TextIO | None) -> None:
    if stream is None:  # (the stream was closed when the interpreter started)
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def _stdout_closed(exc: BaseException) -> bool:
    """Whether `exc` (or a leaf of the group) is stdout's reader gone: `StdoutClosed`, or a
    BrokenPipeError while stdout is a pipe nobody reads any more (not a sandbox's pipe)."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, StdoutClosed) for leaf in leaves):
        return True
    return any(isinstance(leaf, BrokenPipeError) for leaf in leaves) and _reader_gone()


def _reader_gone() -> bool:
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), 0)  # POLLERR is always reported
        return any(event & select.POLLERR for _, event in poll.poll(0))
    except (OSError, ValueError):
        return False


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals come back to `main` (to be reported like any other
    error) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def report(exc: LibosError, *, as_json: bool) -> int:
    if as_json:
        _say_json({"error": exc.code, "message": exc.message})
    else:
        ErrorConsole().print(f"[red]{exc.code}[/red]:", inert(exc.message, 500))
    return EXIT_ERROR


class ErrorConsole(Console):
    """One line per error on stderr, never wrapped. Nobody left to read it (stderr's pipe
    closed): unsaid, and the command keeps its exit status (rich's own answer to a broken pipe
    is SystemExit(1))."""

    def __init__(self) -> None:
        super().__init__(stderr=True, soft_wrap=True)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _to_devnull(sys.stderr)


def _say_json(error: dict[str, str]) -> None:
    """An error as JSON on stdout, flushed now: a reader gone is no traceback (here, or at
    the interpreter's exit)."""
    try:
        print(json.dumps(error, ensure_ascii=True), flush=True)
    except BrokenPipeError:
        stdout_to_devnull()


def report_usage(exc: UsageError, argv: list[str]) -> int:
    return report(InvalidArgument(str(exc)), as_json="--json" in argv)


def report_internal(exc: BaseException, *, as_json: bool) -> int:
    """A failure that is not a typed error: a bug. One line, unless LIBOS_DEBUG asks."""
    if debugging():
        raise exc
    leaf = _leaves(exc)[0]
    message = f"{type(leaf).__name__}: {leaf} (LIBOS_DEBUG=1 shows the traceback)"
    if as_json:
        _say_json({"error": "INTERNAL", "message": message})
    else:
        ErrorConsole().print("[red]INTERNAL[/red]:", inert(message, 500))
    return EXIT_INTERNAL


def debugging() -> bool:
    return os.environ.get("LIBOS_DEBUG", "") not in ("", "0")


class OneLine(logging.Handler):
    """A log record as one inert line on stderr (the stream of the moment): the exception's
    type and message, no traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f" ({type(exc).__name__}: {exc})"
            print(inert(text, 500).plain, file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def quiet_logging() -> None:
    """One line per warning of the broker's own loggers (`libos.*`), on stderr. Only that
    logger is touched: an embedding program's (or a test runner's) logging stays its own."""
    libos = logging.getLogger(LOGGER)
    if debugging() or any(isinstance(h, OneLine) for h in libos.handlers):
        return
    libos.addHandler(OneLine(logging.WARNING))


class FailedBesideCtrlC(Exception):
    """A command that a Ctrl-C interrupted while something really failed (a leaf of the same
    group, or the failure trio's run ended with, the Ctrl-C still pending): the failures are
    reported (`report_beside_ctrl_c`), not hidden behind exit 130."""

    def __init__(self, group: BaseException, failures: list[BaseException]) -> None:
        super().__init__(f"interrupted beside {len(failures)} failure(s)")
        self.group, self.failures = group, failures


def _interruption(leaf: BaseException) -> bool:
    """The Ctrl-C itself, what it cancelled (trio's cancellation, a call's typed
    `Cancelled`), or stdout's reader that went with it (a terminal's Ctrl-C ends `libos demo
    | head` whole): part of the interruption, not a failure beside it. Another pipe's break
    (a peer's, a child's) is a failure."""
    if isinstance(leaf, BrokenPipeError):
        return _reader_gone()
    return isinstance(leaf, (KeyboardInterrupt, trio.Cancelled, Cancelled, StdoutClosed))


@contextlib.contextmanager
def typed_errors() -> Iterator[None]:
    """A typed error raised inside the kernel's nursery comes out of it wrapped in an
    exception group: unwrap it, so the CLI reports it as the typed error it is (a Ctrl-C in
    one is the KeyboardInterrupt it is; one beside a real failure, `FailedBesideCtrlC`). A
    closed stdout, however it surfaced (rich's console, a `print`, inside a group), is
    `StdoutClosed`, stdout then pointed at /dev/null."""
    try:
        yield
    except (StdoutClosed, BrokenPipeError, BaseExceptionGroup, FailedBesideCtrlC) as exc:
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            # Ctrl-C, raised by trio in a task of a nursery (what it cancelled beside it)
            failures = [leaf for leaf in leaves if not _interruption(leaf)]
            if failures:
                raise FailedBesideCtrlC(exc, failures) from None
            raise KeyboardInterrupt from None
        if _stdout_closed(exc):
            stdout_to_devnull()
            raise StdoutClosed from None
        if not isinstance(exc, BaseExceptionGroup):
            raise
        typed = [e for e in leaves if isinstance(e, LibosError)]
        if typed and len(typed) == len(leaves):
            raise typed[0] from None
        raise


def report_beside_ctrl_c(exc: FailedBesideCtrlC, *, as_json: bool) -> int:
    """Each failure as its own error line, then the interruption; the exit status of the
    worst (a bug: 70, else 2), not 130: a script must not take it for a Ctrl-C alone.
    `LIBOS_DEBUG`: the whole group's traceback."""
    if debugging():
        raise exc.group
    said = []
    for failure in exc.failures:
        if isinstance(failure, LibosError):
            said.append((failure.code, failure.message))
        else:
            said.append(("INTERNAL", f"{type(failure).__name__}: {failure} (LIBOS_DEBUG=1"
                                     " shows the traceback)"))
    note = "interrupted (Ctrl-C) while this failed"
    if as_json:
        _say_json({"error": said[0][0], "message": f"{said[0][1]} ({note})"})
    else:
        console = ErrorConsole()
        for code, message in said:
            console.print(f"[red]{code}[/red]:", inert(message, 500))
        console.print(note)
    bug = any(not isinstance(f, LibosError) for f in exc.failures)
    return EXIT_INTERNAL if bug else EXIT_ERROR


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, FailedBesideCtrlC):  # (an inner `typed_errors` said so already)
        return [KeyboardInterrupt(), *exc.failures]
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
