"""Where a store is: an SQLite file (a path), or a PostgreSQL database (a `postgresql://`
address); and where the files that belong beside it go. (`broker.store.opening` opens it.)

A file store keeps its files beside it (`libos.db` → `libos-fs/`, `libos-sandboxes/`). A
database has no "beside" on this host, so they go under the user's state directory
(`$XDG_STATE_HOME/libos`, else `~/.local/state/libos`), in a directory named by the
database the address reaches (`database_name`; never the password).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlencode

SCHEMES = ("postgresql://", "postgres://")

# The parameters that say which database an address reaches, and the environment variables
# libpq takes each from when the address does not give it.
_REACHES = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT",
            "dbname": "PGDATABASE", "user": "PGUSER", "service": "PGSERVICE"}


def is_database(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(SCHEMES)


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "libos"


def beside(target: str | Path, what: str) -> Path:
    """Where the directory (or file) `what` of a store goes on this host: `fs`, `sandboxes`,
    and for a database its chain's `anchor`, its brokers' anchors and marker memory."""
    if is_database(target):
        digest = hashlib.sha256(database_name(str(target)).encode()).hexdigest()[:24]
        return state_dir() / "databases" / digest / what  # (hex: always a plain file name)
    path = Path(target)
    return path.with_name(f"{path.stem}-{what}")


def database_name(dsn: str) -> str:
    """The database `dsn` reaches, as libpq resolves it where that is cheap: each parameter
    as given, else from its `PG*` variable; no dbname is the database named after the user
    (`PGUSER`, else this process's login, as libpq's default). `host:port/dbname` as before
    (a plain address keeps the name, and so the memory, it always had), then `hostaddr` and
    `service` where given: two servers or two services are two databases. (A service file
    is not read: one database named with and without its service has two names.)"""
    from broker.store.pg_connection import driver

    info = driver().conninfo.conninfo_to_dict(dsn)
    given = {key: str(info.get(key) or os.environ.get(env) or "")
             for key, env in _REACHES.items()}
    dbname = given["dbname"] or given["user"] or _login()
    where = f"{given['host'] or 'localhost'}:{given['port'] or 5432}/{dbname}"
    more = [(key, given[key]) for key in ("hostaddr", "service") if given[key]]
    return f"{where}?{urlencode(more)}" if more else where


def _login() -> str:
    """The user libpq connects as when none is named: the effective user's login name."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        import getpass

        return getpass.getuser()
