"""Where a store is: an SQLite file (a path), or a PostgreSQL database (a `postgresql://`
address); and where the files that belong beside it go. (`broker.store.opening` opens it.)

A file store keeps its files beside it (`libos.db` → `libos-fs/`, `libos-sandboxes/`). A
database has no "beside" on this host, so they go under the user's state directory
(`$XDG_STATE_HOME/libos`, else `~/.local/state/libos`), in a directory named by the
database's address (host, port, database; never the user or password).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SCHEMES = ("postgresql://", "postgres://")


def is_database(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(SCHEMES)


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "libos"


def beside(target: str | Path, what: str) -> Path:
    """Where the directory (or file) `what` of a store goes on this host: `fs`, `sandboxes`,
    and for a database its chain's `anchor`."""
    if is_database(target):
        from broker.store.pg_connection import driver

        info = driver().conninfo.conninfo_to_dict(str(target))
        where = (f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/"
                 f"{info.get('dbname') or ''}")
        return state_dir() / "databases" / hashlib.sha256(where.encode()).hexdigest()[:24] / what
    path = Path(target)
    return path.with_name(f"{path.stem}-{what}")
