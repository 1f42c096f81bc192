"""A Ctrl-C out of a sandbox service that a system task owns (`DenoSandbox._system_serve`):
trio raised it in one of the service's tasks (not protected: not the system task's own code),
and out of a system task it would crash the run (TrioInternalError). It is sent again, so
trio delivers it to the main task; a real failure that came out beside it (in the same
group) is logged, as one alone is, not lost with it."""

from __future__ import annotations

import logging
import signal

import trio


def send_on_ctrl_c(exc: BaseException, log: logging.Logger, failed: str) -> bool:
    """If `exc` holds a Ctrl-C: log what else it holds that is a real failure (as `failed`),
    raise SIGINT again, and say True; else False (the caller raises `exc`)."""
    if isinstance(exc, BaseExceptionGroup):
        ctrl_c, rest = exc.split(KeyboardInterrupt)
        real = None if rest is None else rest.split(trio.Cancelled)[1]
    else:
        ctrl_c, real = (exc if isinstance(exc, KeyboardInterrupt) else None), None
    if ctrl_c is None:
        return False
    if real is not None:
        log.error(failed, exc_info=real)
    signal.raise_signal(signal.SIGINT)
    return True
