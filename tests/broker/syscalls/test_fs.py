"""fs primitives end to end: read, write, list, stat, mkdir, remove, chdir/cwd."""

from __future__ import annotations

import pytest

from broker import Conflict, InvalidArgument, Kernel, NotCapable, NotFound
from tests.conftest import open_image

# Both ways the rooted provider opens a checked path (openat2, and the component walk).
pytestmark = pytest.mark.usefixtures("fs_walk")


async def _proc(kernel: Kernel, *caps: str, root: str = "/") -> int:
    await open_image(kernel)
    return kernel.spawn("agent", caps=list(caps), root=root)


async def test_write_read_list_stat_remove(kernel: Kernel) -> None:
    pid = await _proc(kernel, "fs:/work/**:read,write")
    call = kernel.call_tool
    await call(pid, "make_dir", {"path": "/work/a/b", "parents": True})
    assert await call(pid, "write_file", {"path": "/work/a/b/f.txt", "data": "héllo"}) == 6
    assert await call(pid, "write_file", {"path": "/work/a/b/f.txt", "data": "!",
                                          "append": True}) == 1
    assert await call(pid, "read_file", {"path": "/work/a/b/f.txt"}) == "héllo!"
    assert await call(pid, "read_file", {"path": "/work/a/b/f.txt", "offset": 1,
                                         "length": 2, "binary": True}) == "é".encode()
    listing = await call(pid, "list_dir", {"path": "/work/a"})
    assert listing == [{"name": "b", "type": "dir", "size": listing[0]["size"]}]
    stat = await call(pid, "stat", {"path": "/work/a/b/f.txt"})
    assert stat["type"] == "file" and stat["size"] == 7
    with pytest.raises(Conflict):
        await call(pid, "write_file", {"path": "/work/a/b/f.txt", "data": "x",
                                       "exclusive": True})
    with pytest.raises(Conflict):
        await call(pid, "remove", {"path": "/work/a"})
    await call(pid, "remove", {"path": "/work/a", "recursive": True})
    with pytest.raises(NotFound):
        await call(pid, "stat", {"path": "/work/a"})


async def test_binary_file_read_as_text_is_invalid(kernel: Kernel) -> None:
    pid = await _proc(kernel, "fs:/**:read,write")
    await kernel.call_tool(pid, "write_file", {"path": "/bin.dat", "data": b"\xff\xfe"})
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "read_file", {"path": "/bin.dat"})


async def test_cwd_is_per_process_and_stays_inside_the_root(kernel: Kernel) -> None:
    pid = await _proc(kernel, "fs:/**:read,write")
    other = kernel.spawn("agent", caps=["fs:/**:read,write"])
    await kernel.call_tool(pid, "make_dir", {"path": "/proj/src", "parents": True})
    assert await kernel.call_tool(pid, "change_dir", {"path": "/proj"}) == "/proj"
    await kernel.call_tool(pid, "write_file", {"path": "src/x.txt", "data": "x"})
    assert await kernel.call_tool(pid, "read_file", {"path": "/proj/src/x.txt"}) == "x"
    assert await kernel.dispatcher.run(kernel.process(pid), None, "fs.cwd", {}) == "/proj"
    assert await kernel.dispatcher.run(kernel.process(other), None, "fs.cwd", {}) == "/"
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "change_dir", {"path": "src/x.txt"})
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "change_dir", {"path": "../.."})
    assert kernel.store.get_process(pid)["cwd"] == "/proj"


async def test_process_root_is_its_whole_world(kernel: Kernel) -> None:
    await open_image(kernel)
    host = kernel.spawn("agent", caps=["fs:/**:read,write"])
    await kernel.call_tool(host, "make_dir", {"path": "/jail"})
    await kernel.call_tool(host, "write_file", {"path": "/outside.txt", "data": "secret"})
    jailed = kernel.spawn("agent", caps=["fs:/jail/**:read,write"], root="/jail")
    await kernel.call_tool(jailed, "write_file", {"path": "/in.txt", "data": "mine"})
    assert await kernel.call_tool(host, "read_file", {"path": "/jail/in.txt"}) == "mine"
    assert await kernel.call_tool(jailed, "read_file", {"path": "/in.txt"}) == "mine"
    with pytest.raises(NotCapable):
        await kernel.call_tool(jailed, "read_file", {"path": "../outside.txt"})
    with pytest.raises(NotFound):  # "/outside.txt" is <root>/outside.txt, which is not there
        await kernel.call_tool(jailed, "read_file", {"path": "/outside.txt"})


async def test_write_right_does_not_give_read(kernel: Kernel) -> None:
    pid = await _proc(kernel, "fs:/drop/**:write")
    await kernel.call_tool(pid, "make_dir", {"path": "/drop"})
    await kernel.call_tool(pid, "write_file", {"path": "/drop/x", "data": "1"})
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/drop/x"})
    denied = [r for r in kernel.audit(pid) if r["phase"] == "denied"]
    assert denied[-1]["syscall"] == "fs.read" and denied[-1]["resource"] == "/drop/x"
