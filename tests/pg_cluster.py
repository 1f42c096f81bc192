"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, `initdb` and
`pg_ctl` in a temporary directory, listening on a free loopback port; no Docker.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the `postgres` user
that Debian's package creates, and its commands run through `runuser`. The cluster is made
once per test session; each test gets a database of its own (`create_database`).

Where the binaries are missing: in CI (`CI` set) that is a failure, loudly (`.ci/run`
installs them); on a developer's machine the PostgreSQL tests are skipped with the reason.
(pytest-postgresql's process fixture runs `initdb` as the current user, which cannot be root.)
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SUPERUSER = "libos"


def server_bin() -> Path | None:
    """The newest installed server's bin directory ($LIBOS_PG_BIN overrides)."""
    if os.environ.get("LIBOS_PG_BIN"):
        return Path(os.environ["LIBOS_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self) -> None:
        bindir = server_bin()
        if bindir is None or not (bindir / "initdb").exists():
            unavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bin = bindir
        self.as_user: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix="libos-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no `postgres` user to run the server")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self.started = time.monotonic()
        self._run("initdb", "-D", str(self.dir / "data"), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-w", "-t", "60", "-o", options,
                  "-l", str(self.dir / "server.log"), "start")
        self.startup_seconds = time.monotonic() - self.started
        self._names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True,
                              text=True, timeout=120, cwd=self.dir, check=False)
        if done.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            pytest.fail(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}\n{tail}",
                        pytrace=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database; its address."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D",
                            str(self.dir / "data"), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
