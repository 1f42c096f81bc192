"""Shared fixtures: a real kernel over a real SQLite file in a temporary directory, and a real
PostgreSQL server for the tests that run on both backends."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, Kernel
from broker.store.keys import KEY_ENV
from tests.broker.kernel.faulty_store import Fault
from tests.pg_cluster import Cluster

_KEY_DIR = tempfile.mkdtemp(prefix="libos-test-key-")


def pytest_configure(config: pytest.Config) -> None:
    # Every broker the tests open (in this process or a child) signs its audit with one key
    # made for this run, never the user's own.
    os.environ[KEY_ENV] = os.path.join(_KEY_DIR, "audit.key")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_KEY_DIR, ignore_errors=True)

# Builtin tools most tests give their images.
FILE_TOOLS = ("read_file", "write_file", "list_dir", "stat", "make_dir", "remove", "change_dir")
ALL_BUILTINS = (*FILE_TOOLS, "put_object", "get_object", "list_objects", "now", "sleep",
                "whoami", "spawn", "wait", "signal", "list_tools", "register_tool")


USERS_KEY = Path(os.path.expanduser("~"), ".config", "libos", "audit.key")


@pytest.fixture(autouse=True)
def _the_users_audit_key_is_left_alone() -> Iterator[None]:
    """No broker a test starts (here or in a child) signs with, or makes, the user's own key.
    Checked after each test (a stat), so a failure names the test that did it."""
    before = USERS_KEY.stat().st_mtime_ns if USERS_KEY.exists() else None
    yield
    after = USERS_KEY.stat().st_mtime_ns if USERS_KEY.exists() else None
    assert after == before, f"a test made or replaced {USERS_KEY}: give its child bare_env()"


def bare_env(**extra: str) -> dict[str, str]:
    """A child's environment with almost nothing of ours (PATH, and the test run's audit key:
    a broker it opens signs with that key, never the user's own in ~/.config/libos; and
    `LIBOS_PYODIDE_DIR` when set, so that a child finds the Pyodide the tests see)."""
    pyodide = {k: v for k, v in os.environ.items() if k == "LIBOS_PYODIDE_DIR"}
    return {"PATH": "/usr/bin:/bin", KEY_ENV: os.environ[KEY_ENV], **pyodide, **extra}


def python_server(*args: str) -> Any:
    """MCP stdio parameters for a server run by this Python from the repository, in this
    environment: the SDK's client otherwise gives a server only a few variables, and a broker
    there would sign with the user's own audit key, not the test run's."""
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, cwd=str(Path(__file__).parent.parent),
                                 args=list(args), env=dict(os.environ))


@pytest.fixture(params=["openat2", "walk"])
def fs_walk(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test against the rooted fs provider's two ways of opening a checked path: one
    openat2 from the root, and the walk of one O_NOFOLLOW open per component that hosts
    without openat2 use. Both must keep every guarantee (use it before opening a kernel)."""
    from broker.providers import beneath

    if request.param == "openat2":
        if not beneath.usable():
            pytest.skip("openat2 is not available on this host")
    else:
        monkeypatch.setattr(beneath, "usable", lambda: False)
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "libos.db"


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """A store's address on each backend: an SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def fault(db_path: Path) -> Iterator[Fault]:
    """A switch that makes the broker's store fail (`tests/broker/kernel/faulty_store.py`)."""
    with Fault(db_path) as switch:
        yield switch


@pytest.fixture
async def kernel(db_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path) as k:
        yield k


async def open_image(kernel: Kernel, name: str = "agent", *, needs: tuple[str, ...] = (
        "fs:/**:read,write", "obj:*:read,write", "clock:*:read,sleep", "proc:*:spawn",
        "tool:*:register,call"), tools: tuple[str, ...] = ALL_BUILTINS,
        **kwargs: object) -> AgentImage:
    """Register an image that may be granted anything (tests narrow at spawn)."""
    return await kernel.register_image(AgentImage(name, tools=tools, needs=needs, **kwargs))

def anchor_problems(kernel: Kernel) -> list[str]:
    """What the kernel's opens recorded as refused rows (`audit.anchor` records' problems)."""
    return [r["detail"]["problem"] for r in kernel.audit() if r["syscall"] == "audit.anchor"]


async def approve_a_call(kernel: Kernel, pid: int, tool: str, args: dict[str, Any], *,
                         always: bool = False, timeout: float = 5.0) -> None:
    """Call `tool` (which asks) and approve the request it makes: the call then runs."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel.call_tool, pid, tool, args)
        with trio.fail_after(timeout):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.approve(kernel.approvals()[0]["id"], always=always)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL server for the session (see `tests.pg_cluster`)."""
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(pg_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database of its own; the files kept beside it on this host (its chain's
    anchor, its processes' files) under this test's temporary directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return pg_cluster.create_database()


@pytest.fixture
def proxy(pg_database: str) -> Iterator[Any]:
    """`pg_database`'s server, reached through a proxy that can lose an answer
    (`tests.broker.store.pg_proxy`)."""
    from tests.broker.store.pg_proxy import Proxy

    port = int(pg_database.rsplit(":", 1)[1].split("/", 1)[0])
    through = Proxy(port)
    try:
        yield through
    finally:
        through.close()


@pytest.fixture(scope="session")
def remade_pyodide(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stale Pyodide snapshot remade by `libos setup` once for the whole run, xdist workers
    included (see `tests.pyodide_remade`): read it, never change it."""
    from tests.pyodide_remade import remade_once

    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is a directory of the run's own: their parent is shared.
    return remade_once(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
