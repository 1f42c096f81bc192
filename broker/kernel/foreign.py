"""Code that is not the broker's (an embedder's function, its models' validators, its approval
front end) fails with anything, a `BaseException` too (argparse's `SystemExit`, asyncio's
`CancelledError`): that is its own failure, never the broker's end. Two things are not its
failure and go on as themselves: trio's cancellation (a deadline's, a caller's) and a Ctrl-C
(trio raises a person's where it finds the main task)."""

from __future__ import annotations

import trio

_PASSING = (trio.Cancelled, KeyboardInterrupt)


def passes(exc: BaseException) -> bool:
    """Whether `exc` (alone or in a group) is a cancellation or a Ctrl-C, not the code's
    failure."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(_PASSING) is not None
    return isinstance(exc, _PASSING)
