"""shell.run: argv under capabilities scoped by program and argument prefix, cwd inside the fs
root, scrubbed environment, time and output caps, process-group kill, OS confinement."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel, LimitExceeded, NotCapable, NotFound
from broker.providers import landlock
from tests.conftest import ALL_BUILTINS, open_image

NEEDS = ("shell:*:run", "shell:GREETING=* env:run", "fs:/**:read,write")


async def _proc(kernel: Kernel, *caps: str, root: str = "/") -> int:
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command"))
    return kernel.spawn("agent", caps=list(caps), root=root)


async def run(kernel: Kernel, pid: int, **args: Any) -> dict[str, Any]:
    return await kernel.call_tool(pid, "run_command", args)


async def test_argv_runs_under_a_program_and_prefix_scope(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:echo hello *:run", "shell:true:run")
    out = await run(kernel, pid, argv=["echo", "hello", "world"])
    assert out == {"exit_code": 0, "stdout": "hello world\n", "stderr": ""}
    assert (await run(kernel, pid, argv=["true"]))["exit_code"] == 0
    for argv in (["echo", "bye"], ["echo", "hello"], ["true", "x"], ["sh", "-c", "echo"],
                 ["/bin/echo", "hello", "x"]):
        with pytest.raises(NotCapable):
            await run(kernel, pid, argv=argv)
    intent = [r for r in kernel.audit(pid) if r["phase"] == "intent"
              and r["syscall"] == "shell.run"]
    assert intent[0]["resource"] == "echo hello world"


async def test_a_shell_string_only_where_a_capability_names_sh(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:echo *:run")
    with pytest.raises(NotCapable):
        await run(kernel, pid, command="echo hi | tr a-z A-Z")
    pid = await _proc(kernel, "shell:sh -c *:run")
    out = await run(kernel, pid, command="echo hi | tr a-z A-Z")
    assert out["stdout"] == "HI\n"


@pytest.mark.parametrize("args", [
    {"argv": ["echo", "a\x00b"]},
    {"argv": ["ech\x00o"]},
    {"command": "echo \x00"},
    {"argv": ["echo"], "command": "echo"},
    {},
    {"argv": [""]},
    {"argv": ["echo"], "env": {"BAD NAME": "x"}},
    {"argv": ["echo"], "env": {"X": "a\x00b"}},
    {"argv": ["X=1", "echo"]},
    {"argv": ["echo"], "stdin": "a\x00"},
])
async def test_bad_commands_are_typed_audited_and_not_run(kernel: Kernel,
                                                         args: dict[str, Any]) -> None:
    pid = await _proc(kernel, "shell:*:run")
    before = len(kernel.audit(pid))
    with pytest.raises(InvalidArgument):
        await run(kernel, pid, **args)
    records = kernel.audit(pid)[before:]
    assert not any(r["phase"] == "intent" and r["syscall"] == "shell.run" for r in records)
    assert any(r["syscall"] == "shell.run" and r["phase"] == "rejected" for r in records)


async def test_cwd_stays_inside_the_process_root(kernel: Kernel) -> None:
    host = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (host / "jail/sub").mkdir(parents=True)
    (host / "outside").mkdir()
    os.symlink("../../outside", host / "jail/sub/out")
    pid = await _proc(kernel, "shell:pwd:run", "fs:/**:read", root="/jail")
    assert (await run(kernel, pid, argv=["pwd"]))["stdout"] == f"{host}/jail\n"
    assert (await run(kernel, pid, argv=["pwd"], cwd="/sub"))["stdout"] == f"{host}/jail/sub\n"
    await kernel.call_tool(pid, "change_dir", {"path": "/sub"})
    assert (await run(kernel, pid, argv=["pwd"]))["stdout"] == f"{host}/jail/sub\n"
    for cwd, error in (("/../outside", NotCapable), ("/sub/out", NotCapable),
                       ("/missing", NotFound)):
        with pytest.raises(error):
            await run(kernel, pid, argv=["pwd"], cwd=cwd)


async def test_the_environment_is_scrubbed(kernel: Kernel, monkeypatch: Any) -> None:
    monkeypatch.setenv("LIBOS_SECRET", "hunter2")
    pid = await _proc(kernel, "shell:GREETING=* env:run")
    env = (await run(kernel, pid, argv=["env"], env={"GREETING": "hi"}))["stdout"]
    names = {line.split("=", 1)[0] for line in env.splitlines()}
    assert "hunter2" not in env
    assert names <= {"PATH", "HOME", "LANG", "TMPDIR", "GREETING", "PWD"}
    assert "GREETING=hi" in env


async def test_stdin_exit_codes_and_signals(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:*:run")
    assert (await run(kernel, pid, argv=["cat"], stdin="piped"))["stdout"] == "piped"
    assert (await run(kernel, pid, argv=["false"]))["exit_code"] == 1
    out = await run(kernel, pid, command="kill -9 $$")
    assert out["exit_code"] == -9
    with pytest.raises(NotFound):
        await run(kernel, pid, argv=["no-such-program-xyz"])


async def test_time_cap_kills_the_whole_group(kernel: Kernel, tmp_path: Path) -> None:
    pid = await _proc(kernel, "shell:*:run")
    marker = Path(kernel.fs.root) / "child.pid"  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(LimitExceeded):
        await run(kernel, pid, command=f"sleep 60 & echo $! > {marker}; wait", timeout=0.5)
    assert time.monotonic() - started < 5
    _assert_gone(int(marker.read_text()))


def _assert_gone(child: int) -> None:
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":
                return  # a zombie waiting for init to reap it: dead
        time.sleep(0.02)
    raise AssertionError(f"process {child} survived")


async def test_output_cap(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:*:run")
    with pytest.raises(LimitExceeded):
        await run(kernel, pid, argv=["yes"], max_output=10_000)
    out = await run(kernel, pid, argv=["echo", "short"], max_output=10_000)
    assert out["stdout"] == "short\n"


async def test_cancellation_kills_the_whole_group(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:*:run")
    marker = Path(kernel.fs.root) / "child.pid"  # type: ignore[attr-defined]
    with trio.move_on_after(1):
        await run(kernel, pid, command=f"sleep 60 & echo $! > {marker}; wait")
    _assert_gone(int(marker.read_text()))


async def test_killing_the_agent_kills_its_command(kernel: Kernel) -> None:
    from broker import CallTool, ScriptedPlanner

    marker = Path(kernel.fs.root) / "child.pid"  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command"))
    pid = kernel.spawn("agent", caps=["shell:*:run"], planner=ScriptedPlanner([
        CallTool("run_command", {"command": f"sleep 60 & echo $! > {marker}; wait"})]))
    with trio.fail_after(5):
        while not marker.exists() or not marker.read_text().strip():
            await trio.sleep(0.02)
    kernel.kill(pid)
    await kernel.wait(pid, timeout=5)
    _assert_gone(int(marker.read_text()))


@pytest.mark.skipif(landlock.abi_version() == 0, reason="this kernel has no Landlock")
async def test_landlock_confines_the_command_to_the_fs_root(kernel: Kernel,
                                                            tmp_path: Path) -> None:
    host = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (host / "jail").mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    pid = await _proc(kernel, "shell:*:run", root="/jail")
    inside = await run(kernel, pid, command="echo ok > mine.txt && cat mine.txt")
    assert inside["stdout"] == "ok\n"
    assert (host / "jail/mine.txt").read_text() == "ok\n"
    read = await run(kernel, pid, argv=["cat", str(outside)])
    assert read["exit_code"] != 0 and "secret" not in read["stdout"]
    write = await run(kernel, pid, command=f"echo x > {host}/escaped.txt")
    assert write["exit_code"] != 0 and not (host / "escaped.txt").exists()
    # Its temp dir works and is private to the call.
    tmp = await run(kernel, pid, command='echo t > "$TMPDIR/t" && cat "$TMPDIR/t"')
    assert tmp["stdout"] == "t\n"


async def test_no_new_privileges(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:*:run")
    status = (await run(kernel, pid, argv=["cat", "/proc/self/status"]))["stdout"]
    assert "NoNewPrivs:\t1" in status


async def test_missing_landlock_is_said_once_in_the_log(kernel: Kernel, monkeypatch: Any,
                                                        caplog: Any) -> None:
    from broker.providers import shell as shell_mod

    monkeypatch.setattr(shell_mod, "_landlock_logged", False)
    monkeypatch.setattr(landlock, "unavailable_reason", lambda: "Function not implemented")
    first, second = shell_mod.SubprocessShell(), shell_mod.SubprocessShell()
    assert not first.landlock and not second.landlock
    warnings = [r for r in caplog.records if "Landlock is not available" in r.getMessage()]
    assert len(warnings) == 1
    kernel.shell = first  # still confined by rlimits and no-new-privileges
    pid = await _proc(kernel, "shell:*:run")
    status = (await run(kernel, pid, argv=["cat", "/proc/self/status"]))["stdout"]
    assert "NoNewPrivs:\t1" in status


async def test_shell_needs_a_local_filesystem(tmp_path: Path) -> None:
    from broker.providers.memfs import MemoryFs

    async with Kernel.open(tmp_path / "m.db", fs=MemoryFs()) as kernel:
        pid = await _proc(kernel, "shell:*:run")
        with pytest.raises(InvalidArgument):
            await run(kernel, pid, argv=["true"])


def _limits(text: str) -> dict[str, tuple[str, str]]:
    """/proc/self/limits: each limit's soft and hard value."""
    rows = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        rows[name] = (soft, hard)
    return rows


async def test_every_limit_holds_in_the_command(kernel: Kernel) -> None:
    """The limits are set by a shim exec'd before the command (`confine_exec`), not by
    Python in the broker's forked child (`preexec_fn`, a deadlock risk in a threaded
    process): each still holds, soft and hard, in the command itself."""
    from broker.providers.shell import ShellLimits, SubprocessShell

    kernel.shell = SubprocessShell(ShellLimits(address_space=3 << 30, file_size=5 << 20,
                                               open_files=77))
    pid = await _proc(kernel, "shell:*:run")
    done = await run(kernel, pid, argv=["cat", "/proc/self/limits", "/proc/self/status"],
                     timeout=9)
    limits = _limits(done["stdout"].split("Name:")[0])
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max cpu time"] == ("11", "11")  # (the call's timeout, and 2 s)
    assert limits["Max address space"] == (str(3 << 30),) * 2
    assert limits["Max file size"] == (str(5 << 20),) * 2
    assert limits["Max open files"] == ("77", "77")
    assert "NoNewPrivs:\t1" in done["stdout"]
    assert "Name:\tcat\n" in done["stdout"]  # (the command itself: the shim exec'd it)


def test_a_confinement_that_fails_runs_nothing(tmp_path: Path) -> None:
    """The shim refuses to run a command it could not confine (a ruleset that is not one):
    126, the reason on stderr, and the command never ran."""
    import subprocess

    from broker.providers import confine_exec

    marker = tmp_path / "ran"
    env_fd = confine_exec.environment_fd({"PATH": "/bin"})
    argv = confine_exec.arguments(5, 1 << 30, 1 << 20, 64, 999, env_fd,
                                  ["/usr/bin/touch", str(marker)])
    done = subprocess.run(argv, env={}, capture_output=True, check=False, pass_fds=(env_fd,))
    os.close(env_fd)
    assert done.returncode == confine_exec.REFUSED and b"not confined" in done.stderr
    assert not marker.exists()


def test_the_commands_environment_is_not_in_the_shims_arguments() -> None:
    """The shim's argv is readable by any local user (/proc/PID/cmdline) while it runs: the
    command's environment (which may carry a secret the capability allows) goes in a memfd,
    and reaches the command whole (a value with '=' and non-ASCII in it)."""
    import subprocess

    from broker.providers import confine_exec

    env = {"PATH": "/bin", "TOKEN": "hunter2=x\u00e9"}
    env_fd = confine_exec.environment_fd(env)
    argv = confine_exec.arguments(5, 1 << 30, 1 << 20, 64, None, env_fd, ["/usr/bin/env"])
    assert not any("hunter2" in a for a in argv)
    done = subprocess.run(argv, env={}, capture_output=True, check=True, pass_fds=(env_fd,))
    os.close(env_fd)
    assert done.stdout.decode().splitlines() == ["PATH=/bin", "TOKEN=hunter2=x\u00e9"]


def test_a_limit_the_shim_may_not_set_runs_nothing_and_says_why(tmp_path: Path) -> None:
    """A limit above the broker's own hard one (an open-files bound over `ulimit -Hn`):
    `setrlimit` raises ValueError, not OSError, and the shim died of it with a Python
    traceback (exit 1, the broker's paths on the command's stderr, as if the command had
    run and failed). Now: 126 and the reason, like any confinement that fails; the command
    never ran. The neighbour, a limit within the hard one, runs."""
    import subprocess

    from broker.providers import confine_exec

    marker = tmp_path / "ran"

    def shim(files: int) -> subprocess.CompletedProcess[bytes]:
        env_fd = confine_exec.environment_fd({"PATH": "/bin"})
        try:
            argv = confine_exec.arguments(5, 1 << 30, 1 << 20, files, None, env_fd,
                                          ["/usr/bin/touch", str(marker)])
            return subprocess.run(["/bin/sh", "-c", 'ulimit -n 64 && exec "$@"', "sh", *argv],
                                  env={}, capture_output=True, check=False, pass_fds=(env_fd,))
        finally:
            os.close(env_fd)

    done = shim(256)
    assert done.returncode == confine_exec.REFUSED, done.stderr
    assert b"not confined" in done.stderr and b"Traceback" not in done.stderr
    assert not marker.exists()
    assert shim(32).returncode == 0 and marker.exists()
