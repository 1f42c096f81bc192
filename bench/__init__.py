"""The benchmarks (`python -m bench`, `libos bench`, `python -m bench.SUITE`).

Every broker a bench tool opens (in this process or a child it starts) signs with an audit
key of the bench run's own, in a temporary directory removed at exit (or on SIGTERM or
SIGHUP), never the user's (`~/.config/libos/audit.key`: made or used mid-run, it changed
what a test run in parallel found there; its key directory gathered a bench's walks and
writer locks). A user who wants another key names it in `LIBOS_AUDIT_KEY`, which is then
used as it is.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

from broker.store.keys import KEY_ENV


def _own_audit_key() -> None:
    if os.environ.get(KEY_ENV):  # (the user's choice)
        return
    where = tempfile.mkdtemp(prefix="libos-bench-key-")
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    _removed_on_signal(where)
    os.environ[KEY_ENV] = os.path.join(where, "audit.key")


def _removed_on_signal(where: str) -> None:
    """`atexit` does not run when a signal ends the process (a CI job's timeout, `timeout`,
    a closed terminal): on SIGTERM or SIGHUP left at their default, remove `where`, then end
    by that signal as before."""

    def remove_and_end(signum: int, _frame: object) -> None:
        shutil.rmtree(where, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, remove_and_end)
        except ValueError:  # (imported outside the main thread: atexit alone)
            return


_own_audit_key()
