"""One fs suite, every fs provider: the rooted local directory and the in-memory tree give the
same results and the same typed errors for the same calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.providers.fs import LocalFs
from broker.providers.memfs import MemoryFs
from tests.conftest import open_image

# Both ways the rooted provider opens a checked path (openat2, and the component walk).
pytestmark = pytest.mark.usefixtures("fs_walk")

PROVIDERS = {"local": lambda tmp: LocalFs(tmp / "root"), "memory": lambda tmp: MemoryFs()}


@pytest.fixture(params=sorted(PROVIDERS))
async def fs_kernel(request: Any, tmp_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(tmp_path / "libos.db", fs=PROVIDERS[request.param](tmp_path)) as k:
        yield k


# (tool, args, expected result | error code). Directory sizes and mtimes differ by nature.
SCRIPT: list[tuple[str, dict[str, Any], Any]] = [
    ("list_dir", {"path": "/"}, []),
    ("read_file", {"path": "/nope.txt"}, "NOT_FOUND"),
    ("write_file", {"path": "/a/b.txt", "data": "x"}, "NOT_FOUND"),
    ("make_dir", {"path": "/a"}, None),
    ("make_dir", {"path": "/a"}, "CONFLICT"),
    ("make_dir", {"path": "/a", "parents": True}, None),
    ("make_dir", {"path": "/p/q/r", "parents": True}, None),
    ("write_file", {"path": "/a/b.txt", "data": "héllo"}, 6),
    ("write_file", {"path": "/a/b.txt", "data": "!", "append": True}, 1),
    ("write_file", {"path": "/a/b.txt", "data": "x", "exclusive": True}, "CONFLICT"),
    ("read_file", {"path": "/a/b.txt"}, "héllo!"),
    ("read_file", {"path": "/a/b.txt", "offset": 1, "length": 2, "binary": True}, "é".encode()),
    ("read_file", {"path": "/a/b.txt", "offset": 100}, ""),
    ("read_file", {"path": "/a"}, "INVALID_ARGUMENT"),
    ("read_file", {"path": "/a/b.txt/"}, "INVALID_ARGUMENT"),
    ("write_file", {"path": "/a", "data": "x"}, "INVALID_ARGUMENT"),
    ("write_file", {"path": "/a/b.txt/c", "data": "x"}, "INVALID_ARGUMENT"),
    ("write_file", {"path": "/", "data": "x"}, "INVALID_ARGUMENT"),
    ("write_file", {"path": "/bin.dat", "data": b"\xff\xfe"}, 2),
    ("read_file", {"path": "/bin.dat"}, "INVALID_ARGUMENT"),
    ("stat", {"path": "/a/b.txt"}, {"type": "file", "size": 7}),
    ("stat", {"path": "/a"}, {"type": "dir"}),
    ("stat", {"path": "/"}, {"type": "dir"}),
    ("stat", {"path": "/a/b.txt/"}, "INVALID_ARGUMENT"),
    ("stat", {"path": "/zzz"}, "NOT_FOUND"),
    ("list_dir", {"path": "/a"}, [{"name": "b.txt", "type": "file", "size": 7}]),
    ("list_dir", {"path": "/a/b.txt"}, "INVALID_ARGUMENT"),
    ("list_dir", {"path": "/missing"}, "NOT_FOUND"),
    ("make_dir", {"path": "/a/b.txt/d", "parents": True}, "INVALID_ARGUMENT"),
    ("remove", {"path": "/a"}, "CONFLICT"),
    ("remove", {"path": "/a/b.txt/"}, "INVALID_ARGUMENT"),
    ("remove", {"path": "/"}, "INVALID_ARGUMENT"),
    ("remove", {"path": "/zzz"}, "NOT_FOUND"),
    ("remove", {"path": "/a/b.txt"}, None),
    ("remove", {"path": "/a"}, None),
    ("remove", {"path": "/p", "recursive": True}, None),
    ("change_dir", {"path": "/bin.dat"}, "INVALID_ARGUMENT"),
    ("make_dir", {"path": "/w"}, None),
    ("change_dir", {"path": "/w"}, "/w"),
    ("write_file", {"path": "rel.txt", "data": "r"}, 1),
    ("read_file", {"path": "/w/rel.txt"}, "r"),
    ("read_file", {"path": "../bin.dat", "binary": True}, b"\xff\xfe"),
    ("list_dir", {"path": "/"}, [{"name": "bin.dat", "type": "file", "size": 2},
                                 {"name": "w", "type": "dir"}]),
]


def _shape(result: Any, expected: Any) -> Any:
    """Drop what differs by nature (mtimes, directory sizes) before comparing."""
    if isinstance(expected, dict) and isinstance(result, dict):
        return {k: result.get(k) for k in expected}
    if isinstance(expected, list) and isinstance(result, list):
        return [_shape(r, e) for r, e in zip(result, expected, strict=False)] + result[
            len(expected):]
    return result


async def test_the_shared_fs_suite(fs_kernel: Kernel) -> None:
    await open_image(fs_kernel)
    pid = fs_kernel.spawn("agent", caps=["fs:/**:read,write"])
    for step, (tool, args, expected) in enumerate(SCRIPT):
        try:
            result: Any = await fs_kernel.call_tool(pid, tool, args)
        except Exception as exc:
            result = getattr(exc, "code", repr(exc))
        assert _shape(result, expected) == expected, (step, tool, args, result)
    assert fs_kernel.verify_audit()[1] == []


async def test_a_process_root_holds_in_every_provider(fs_kernel: Kernel) -> None:
    await open_image(fs_kernel)
    host = fs_kernel.spawn("agent", caps=["fs:/**:read,write"])
    await fs_kernel.call_tool(host, "make_dir", {"path": "/jail/in", "parents": True})
    await fs_kernel.call_tool(host, "write_file", {"path": "/secret.txt", "data": "s"})
    jailed = fs_kernel.spawn("agent", caps=["fs:/jail/**:read,write"], root="/jail")
    assert await fs_kernel.call_tool(jailed, "write_file", {"path": "/in/x", "data": "x"}) == 1
    assert await fs_kernel.call_tool(host, "read_file", {"path": "/jail/in/x"}) == "x"
    for path in ("../secret.txt", "/../secret.txt", "/in/../../secret.txt"):
        with pytest.raises(Exception) as caught:
            await fs_kernel.call_tool(jailed, "read_file", {"path": path})
        assert getattr(caught.value, "code", None) == "NOT_CAPABLE"


def test_memory_fs_has_a_size_cap() -> None:
    from broker.caps import Capability, CapabilityTable, normalize

    fs = MemoryFs(max_bytes=10)
    table = CapabilityTable(1)
    table.add(Capability("fs", "/**", frozenset({"write"}), owner=1))

    def checked() -> Any:  # a proof is of the tree as the check saw it: one per call
        return table.check_path("write", normalize("/f"), root=(), locate=fs.locate,
                                identify=fs.identify, now=0.0).proof

    assert fs.write(checked(), b"x" * 10, append=False, exclusive=False) == 10
    with pytest.raises(Exception) as caught:
        fs.write(checked(), b"y", append=True, exclusive=False)
    assert getattr(caught.value, "code", None) == "LIMIT_EXCEEDED"
    assert fs.write(checked(), b"z" * 10, append=False, exclusive=False) == 10
    with pytest.raises(TypeError):  # an unchecked path never reaches the provider
        fs.write(normalize("/f"), b"", append=False, exclusive=False)  # type: ignore[arg-type]
