"""The benchmarks (`python -m bench`, `libos bench`, `python -m bench.SUITE`).

Every broker a bench tool opens (in this process or a child it starts) signs with an audit
key of the bench run's own, in a temporary directory removed at exit, never the user's
(`~/.config/libos/audit.key`: made or used mid-run, it changed what a test run in parallel
found there; its key directory gathered a bench's walks and writer locks). A user who wants
another key names it in `LIBOS_AUDIT_KEY`, which is then used as it is.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from broker.store.keys import KEY_ENV


def _own_audit_key() -> None:
    if os.environ.get(KEY_ENV):  # (the user's choice)
        return
    where = tempfile.mkdtemp(prefix="libos-bench-key-")
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    os.environ[KEY_ENV] = os.path.join(where, "audit.key")


_own_audit_key()
