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

from broker.errors import Conflict

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


class MemoryMoved(Conflict):
    """A database's files on this host are under the name an earlier libos gave its address,
    and none under the name it has now: an open would start a new memory (anchors, marker,
    file root) and lose the one kept, so it is refused until the operator moves it."""


def beside(target: str | Path, what: str) -> Path:
    """Where the directory (or file) `what` of a store goes on this host: `fs`, `sandboxes`,
    and for a database its chain's `anchor`, its brokers' anchors and marker memory."""
    if is_database(target):
        databases = state_dir() / "databases"
        named, was = database_name(str(target)), _earlier_name(str(target))
        here = databases / _digest(named)  # (hex: a plain file name)
        earlier = databases / _digest(was)
        if earlier != here and not here.exists() and earlier.exists():
            # (both addresses named: the directories' names alone tell the operator nothing,
            # and one may be the memory of a database still used under that address)
            raise MemoryMoved(
                f"this host kept a database's memory under {earlier}, the name an earlier"
                f" libos gave this address ({was}), not {here} ({named}): move it there if"
                f" it is this database's; if it is {was}'s, still used, leave it and make"
                f" {here} an empty directory to start afresh")
        return here / what
    path = Path(target)
    return path.with_name(f"{path.stem}-{what}")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _earlier_name(dsn: str) -> str:
    """The name libos gave `dsn` before `database_name` (the DSN's own host, port and dbname,
    no variable, no user): an upgrade finds the memory kept under it."""
    from broker.store.pg_connection import driver

    info = driver().conninfo.conninfo_to_dict(dsn)
    host, port = info.get("host") or "localhost", info.get("port") or 5432
    return f"{host}:{port}/{info.get('dbname') or ''}"


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
    # ('?' and '%' quoted: a dbname holding "?hostaddr=..." is not another server's name)
    dbname = (given["dbname"] or given["user"] or _login()).replace("%", "%25").replace(
        "?", "%3F")
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
