"""The rooted provider's descriptors, attacked: the broker out of descriptors (EMFILE) while a
process calls every fs syscall, and the root descriptor the provider keeps for openat2 seen
from the children the broker starts (a shell command, a Deno sandbox)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import LibosError
from tests.broker.syscalls.path_attacks import NEIGHBOUR, VARIANTS, RacyFs, Runner, plant


@contextmanager
def no_descriptors_left() -> Iterator[None]:
    """Every descriptor this process may open is taken (a lowered soft limit, filled)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, used + 64), hard))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("fs_walk")
async def test_out_of_descriptors_every_fs_call_is_limit_exceeded_with_its_record(
        tmp_path: Path) -> None:
    tree = plant(tmp_path)
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        paths = {"fs.list": "dir", "fs.chdir": "dir", "fs.mkdir": "dir/new",
                 "fs.remove": "dir/f.txt"}
        seen: dict[str, Any] = {}
        with no_descriptors_left():
            for op, extra in VARIANTS:
                args = {"path": paths.get(op, "dir/f.txt"), **extra}
                before = kernel.store.head_seq
                try:
                    seen[f"{op} {extra}"] = runner.call("main", op, args)
                except LibosError as exc:
                    seen[f"{op} {extra}"] = type(exc).__name__
                    assert runner._audited(before, op, exc.code), (op, extra)
        # Never a wrong answer, never an untyped error: the host's limit, said as a limit.
        assert seen == {f"{op} {extra}": "LimitExceeded" for op, extra in VARIANTS}, seen
        assert (tree.fs_root / "work/pub/dir/f.txt").read_text() == "f"
        assert not (tree.fs_root / "work/pub/dir/new").exists()
        assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
        assert runner.call("main", "fs.write", {"path": "dir/f.txt", "data": "g"}) == 1
        count, problems = kernel.verify_audit()
        assert count > len(VARIANTS) and problems == []


def _links_of(pid: int | str) -> dict[str, str]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
    return found


def _children() -> list[int]:
    """This process's children (whichever of its threads started them)."""
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found += [int(pid) for pid in f.read().split()]
    return found


def _openat2_kernel_root(kernel: Kernel) -> str:
    root_fd = kernel.fs._root_fd  # type: ignore[attr-defined]
    if root_fd is None:
        pytest.skip("openat2 is not available on this host: no root descriptor is kept")
    root = os.path.realpath(kernel.fs.root)  # type: ignore[attr-defined]
    assert os.readlink(f"/proc/self/fd/{root_fd}") == root  # (what a child must not hold)
    return root


async def shell_descriptors(kernel: Kernel) -> tuple[int, list[str]]:
    """A process that may run commands and use the tree, and where each descriptor its
    command's shell holds leads (its own `ls` reads /proc/<the shell>/fd: the shell's,
    inherited from the broker)."""
    from tests.conftest import ALL_BUILTINS, open_image

    await open_image(kernel, needs=("shell:*:run", "fs:/**:read,write"),
                     tools=(*ALL_BUILTINS, "run_command"))
    pid = kernel.spawn("agent", caps=["shell:sh -c *:run", "fs:/**:read,write"])
    out = await kernel.call_tool(pid, "run_command", {
        "command": 'for fd in /proc/$$/fd/*; do echo "$fd $(readlink $fd)"; done'})
    assert out["exit_code"] == 0, out
    return pid, [line.split(" ", 1)[1] for line in out["stdout"].splitlines()]


async def test_a_shell_command_inherits_no_root_descriptor(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as kernel:
        root = _openat2_kernel_root(kernel)
        pid, held = await shell_descriptors(kernel)
        assert held and not any(target == root or target.startswith(root + "/")
                                for target in held), held
        # The command still works in the tree (its cwd is there) while holding nothing of it.
        out = await kernel.call_tool(pid, "run_command", {"command": "pwd"})
        assert out["stdout"].strip() == root


async def test_a_deno_sandbox_holds_no_root_descriptor(tmp_path: Path) -> None:
    from broker import AgentImage
    from sandboxes.deno import DenoSandbox
    from tests.conftest import ALL_BUILTINS
    from tests.sandboxes.conftest import LIMITS, NEEDS

    before = set(_children())
    async with DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb) as sandbox, Kernel.open(
            tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS) as kernel:
        root = _openat2_kernel_root(kernel)
        await kernel.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = kernel.spawn("agent", caps=["fs:/**:read,write", "tool:*:register,call"])
        await kernel.call_tool(pid, "register_tool", {"name": "t", "lang": "ts", "source": (
            "export default async (args: any, libos: any) => await libos.fs.write('/x', 'y')")})
        assert await kernel.call_tool(pid, "t", {}) == 1
        sandboxes = set(_children()) - before
        assert sandboxes, "no sandbox process to look at"
        for child in sandboxes:
            held = _links_of(child).values()
            assert not any(t == root or t.startswith(root + "/") for t in held), (child, held)


async def test_no_hostile_path_switches_the_provider_to_its_walk(tmp_path: Path) -> None:
    """openat2's own errors on hostile paths (EXDEV, ELOOP, ENAMETOOLONG, ENOTDIR, ENOENT)
    are answers about the path; whether openat2 is there at all was found out once, on a
    harmless open, and stays so."""
    from broker.providers import beneath
    from tests.broker.syscalls.path_attacks import corpus

    if not beneath.usable():
        pytest.skip("openat2 is not available on this host")
    tree = plant(tmp_path)
    fs = RacyFs(tree.fs_root)
    root_fd = fs._root_fd
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        for attempt in corpus()[::7]:
            runner.play(attempt)
        for path in ("ok.txt/x", "/work/pub/" + "d/" * 255 + "f", "nothing/here"):
            with pytest.raises(LibosError):
                runner.call("main", "fs.read", {"path": path})
        assert runner.failures == [] and runner.refused > 100
    assert beneath.usable() is True and fs._root_fd == root_fd is not None
    assert RacyFs(tmp_path / "another")._root_fd is not None
