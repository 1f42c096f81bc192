"""shell.run's environment is part of what is checked: only the default set and variables the
capability names pass, every variable is in the resource (asked and audited in full), and
PATH, HOME, TMPDIR and LANG are always the broker's. Real git, tar, bash and friends."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import ApprovalDenied, InvalidArgument, Kernel, NotCapable
from broker.caps.shell_env import (
    MAX_COMMAND,
    MAX_ENV_BYTES,
    MAX_ENV_NAME,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    MAX_PROGRAM,
    command_resource,
)
from broker.caps.shell_scope import split
from broker.providers.shell import SAFE_PATH
from tests.conftest import ALL_BUILTINS, open_image

_images = itertools.count()
FSMONITOR = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor"}


def ask(scope: str) -> dict[str, Any]:
    return {"kind": "shell", "scope": scope, "rights": ["run"], "effect": "ask"}


async def _proc(kernel: Kernel, *caps: Any) -> int:
    """A process holding exactly `caps` (and the fs), from an image that declares them."""
    needs = (*caps, "fs:/**:read,write")
    image = f"agent{next(_images)}"
    await open_image(kernel, image, needs=needs, tools=(*ALL_BUILTINS, "run_command"))
    return kernel.spawn(image, caps=list(needs))


async def run(kernel: Kernel, pid: int, argv: list[str], env: dict[str, str] | None = None,
              ) -> dict[str, Any]:
    args: dict[str, Any] = {"argv": argv}
    if env is not None:
        args["env"] = env
    return await kernel.call_tool(pid, "run_command", args)


def _repo(kernel: Kernel) -> Path:
    host = Path(kernel.fs.root)  # type: ignore[attr-defined]
    subprocess.run(["git", "init", "-q", str(host)], check=True)
    return host


def _records(kernel: Kernel, pid: int, phase: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["phase"] == phase and r["syscall"] == "shell.run"]


def _assert_denied_in_full(kernel: Kernel, pid: int, env: dict[str, str],
                           argv: list[str]) -> None:
    """The denial is audited with every variable, whole, in its resource (its message, like
    every string of a detail, is cut at 256 characters)."""
    [denied] = _records(kernel, pid, "denied")
    resource = command_resource(env, argv)
    assert denied["resource"] == resource
    assert split(denied["resource"]) == (env, command_resource({}, argv))
    assert denied["detail"]["error"] == "NOT_CAPABLE"
    assert repr(resource)[:200] in denied["detail"]["message"]
    assert not _records(kernel, pid, "intent")


async def test_git_config_from_the_environment_cannot_make_git_status_run_a_command(
        kernel: Kernel) -> None:
    host = _repo(kernel)
    pid = await _proc(kernel, "shell:git status:run")
    env = {**FSMONITOR, "GIT_CONFIG_VALUE_0": f"touch {host}/pwned; false"}
    with pytest.raises(NotCapable):
        await run(kernel, pid, ["git", "status"], env)
    assert not (host / "pwned").exists()
    _assert_denied_in_full(kernel, pid, env, ["git", "status"])
    # The neighbour: the command the capability names runs, default variables included.
    out = await run(kernel, pid, ["git", "status"], {"LC_ALL": "C", "TZ": "UTC", "NO_COLOR": "1"})
    assert out["exit_code"] == 0 and "No commits yet" in out["stdout"]
    assert (await run(kernel, pid, ["git", "status"]))["exit_code"] == 0
    intents = _records(kernel, pid, "intent")
    assert [r["resource"] for r in intents] == ["LC_ALL=C NO_COLOR=1 TZ=UTC git status",
                                                "git status"]


@pytest.mark.parametrize(("argv", "env"), [
    (["git", "diff"], {"GIT_EXTERNAL_DIFF": "touch pwned"}),
    (["git", "fetch", "origin"], {"GIT_SSH_COMMAND": "touch pwned"}),
    (["tar", "-xf", "a.tar"], {"TAR_OPTIONS": "--to-command=touch pwned"}),
    (["less", "a.txt"], {"LESSOPEN": "|touch pwned"}),
    (["openssl", "version"], {"OPENSSL_CONF": "/evil.cnf"}),
    (["bash", "-c", "true"], {"SHELLOPTS": "xtrace", "PS4": "$(touch pwned)"}),
    (["java", "-version"], {"JAVA_TOOL_OPTIONS": "-javaagent:/evil.jar"}),
    (["git", "status"], {"HOME": "/attacker"}),  # its .gitconfig: core.fsmonitor again
    (["git", "status"], {"TMPDIR": "/attacker"}),
    (["echo"], {"LD_PRELOAD": "/evil.so"}),
    (["echo"], {"TZ": "/etc/shadow"}),  # a default name, but a value that reads a file
    (["echo"], {"TZ": ":../../../etc/shadow"}),
    (["echo"], {"LC_ALL": "../../../tmp/evil"}),
    (["echo"], {"TERM": "../evil"}),
])
async def test_variables_the_capability_does_not_name_are_refused(
        kernel: Kernel, argv: list[str], env: dict[str, str]) -> None:
    host = Path(kernel.fs.root)  # type: ignore[attr-defined]
    pid = await _proc(kernel, f"shell:{command_resource({}, argv)} *:run",
                      f"shell:{command_resource({}, argv)}:run")
    with pytest.raises(NotCapable):
        await run(kernel, pid, argv, env)
    assert not (host / "pwned").exists()
    _assert_denied_in_full(kernel, pid, env, argv)


async def test_padding_cannot_push_a_variable_out_of_the_audit(kernel: Kernel) -> None:
    host = _repo(kernel)
    pid = await _proc(kernel, "shell:git status:run")
    padding = {f"AAA{i:02d}": "p" * 300 for i in range(40)}  # sort first, longer than 256
    env = {**padding, **FSMONITOR, "GIT_CONFIG_VALUE_0": f"touch {host}/pwned"}
    with pytest.raises(NotCapable):
        await run(kernel, pid, ["git", "status"], env)
    _assert_denied_in_full(kernel, pid, env, ["git", "status"])


async def test_every_allowed_variable_is_in_the_intent_record(kernel: Kernel) -> None:
    names = [f"AAA{i:02d}" for i in range(40)]
    pid = await _proc(kernel, f"shell:{' '.join(n + '=*' for n in names)} env:run")
    env = {name: f"{name} " + "v" * 300 for name in names}
    out = await run(kernel, pid, ["env"], env)
    seen = dict(line.split("=", 1) for line in out["stdout"].splitlines())
    assert all(seen[name] == value for name, value in env.items())
    [intent] = _records(kernel, pid, "intent")
    assert split(intent["resource"]) == (env, "env")


async def test_a_capability_that_names_a_variable_allows_that_one(kernel: Kernel) -> None:
    _repo(kernel)
    pid = await _proc(kernel, "shell:GIT_PAGER=* git var GIT_PAGER:run",
                      "shell:'GIT_EDITOR=vi -n' git var GIT_EDITOR:run")
    out = await run(kernel, pid, ["git", "var", "GIT_PAGER"], {"GIT_PAGER": "cat"})
    assert out == {"exit_code": 0, "stdout": "cat\n", "stderr": ""}
    out = await run(kernel, pid, ["git", "var", "GIT_EDITOR"], {"GIT_EDITOR": "vi -n"})
    assert out["stdout"] == "vi -n\n"
    assert (await run(kernel, pid, ["git", "var", "GIT_PAGER"]))["exit_code"] == 0
    for argv, env in (
            (["git", "var", "GIT_PAGER"], {"GIT_PAGER": "cat", "GIT_SSH_COMMAND": "x"}),
            (["git", "var", "GIT_EDITOR"], {"GIT_PAGER": "cat"}),  # named for another command
            (["git", "var", "GIT_EDITOR"], {"GIT_EDITOR": "vi"}),  # named with another value
    ):
        with pytest.raises(NotCapable):
            await run(kernel, pid, argv, env)


async def test_the_broker_sets_path_home_tmpdir_and_lang_after_the_caller(
        kernel: Kernel) -> None:
    host = Path(kernel.fs.root)  # type: ignore[attr-defined]
    mine = {"PATH": f"{host}/bin", "HOME": f"{host}/home", "TMPDIR": f"{host}/tmp",
            "LANG": "xx_XX.UTF-8"}
    pid = await _proc(kernel, "shell:env:run")
    with pytest.raises(NotCapable):  # not named: refused
        await run(kernel, pid, ["env"], {"HOME": mine["HOME"]})
    # Named by the capability: shown and audited as asked, but the broker's values win.
    pid = await _proc(kernel, "shell:HOME=* LANG=* PATH=* TMPDIR=* env:run")
    out = await run(kernel, pid, ["env"], mine)
    seen = dict(line.split("=", 1) for line in out["stdout"].splitlines())
    assert seen["PATH"] == SAFE_PATH and seen["LANG"] == "C.UTF-8"
    assert seen["TMPDIR"].startswith(f"{tempfile.gettempdir()}/libos-shell-")
    assert seen["HOME"] == f"{seen['TMPDIR']}/home"  # fresh and empty, not the fs root
    [intent] = _records(kernel, pid, "intent")
    assert split(intent["resource"]) == (mine, "env")


async def test_an_ask_capability_shows_every_variable_to_the_person(kernel: Kernel) -> None:
    _repo(kernel)
    names = [f"AAA{i:02d}" for i in range(40)]
    scope = " ".join(n + "=*" for n in names) + " GIT_PAGER=* git var *"
    pid = await _proc(kernel, ask(scope))
    env = {**{name: "p" * 300 for name in names}, "GIT_PAGER": "cat"}
    argv = ["git", "var", "GIT_PAGER"]
    results: list[Any] = []

    async def call() -> None:
        results.append(await run(kernel, pid, argv, env))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        assert request["resource"] == command_resource(env, argv)
        assert request["args"]["env"] == env
        [asked] = _records(kernel, pid, "ask")
        assert asked["resource"] == command_resource(env, argv)
        with pytest.raises(InvalidArgument):  # too long to be a standing scope: name one
            kernel.approve(request["id"], always=True)
        kernel.approve(request["id"])  # once: bound to exactly these arguments
    assert results[0]["stdout"] == "cat\n"
    [intent] = _records(kernel, pid, "intent")
    assert intent["resource"] == command_resource(env, argv)


async def test_always_is_no_wider_than_the_asking_capability(kernel: Kernel) -> None:
    _repo(kernel)
    pid = await _proc(kernel, ask("GIT_PAGER=* git var *"))
    argv, env = ["git", "var", "GIT_PAGER"], {"GIT_PAGER": "cat"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, kernel, pid, argv, env)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        with pytest.raises(NotCapable):  # a name the asking capability does not name
            kernel.approve(request["id"], always=True,
                           scope="GIT_PAGER=* GIT_SSH_COMMAND=* git var *")
        with pytest.raises(InvalidArgument):  # does not cover the asked variable
            kernel.approve(request["id"], always=True, scope="git var *")
        kernel.approve(request["id"], always=True, scope="GIT_PAGER=* git var GIT_PAGER")
    out = await run(kernel, pid, argv, {"GIT_PAGER": "less"})  # the standing grant: no asking
    assert out["stdout"] == "less\n"


async def test_a_deny_rule_holds_whatever_the_environment(kernel: Kernel) -> None:
    _repo(kernel)
    deny = {"kind": "shell", "scope": "git var *", "rights": ["run"], "effect": "deny"}
    pid = await _proc(kernel, "shell:GIT_PAGER=* git *:run", deny)
    with pytest.raises(NotCapable, match="denied by a rule"):
        await run(kernel, pid, ["git", "var", "GIT_PAGER"], {"GIT_PAGER": "cat"})
    assert (await run(kernel, pid, ["git", "status"], {"GIT_PAGER": "cat"}))["exit_code"] == 0


async def test_an_ask_answered_deny_audits_every_variable(kernel: Kernel) -> None:
    pid = await _proc(kernel, ask("X=* echo"))
    env = {"X": "x" * MAX_ENV_VALUE}
    async with trio.open_nursery() as nursery:
        async def call() -> None:
            with pytest.raises(ApprovalDenied):
                await run(kernel, pid, ["echo"], env)
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.deny(kernel.approvals()[0]["id"])
    [denied] = _records(kernel, pid, "denied")
    assert denied["resource"] == command_resource(env, ["echo"])


@pytest.mark.parametrize("env", [
    {f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)},
    {"V" * (MAX_ENV_NAME + 1): "x"},
    {"V": "x" * (MAX_ENV_VALUE + 1)},
    {"1V": "x"},
    {"V-W": "x"},
    {"": "x"},
])
async def test_the_environment_is_bounded(kernel: Kernel, env: dict[str, str]) -> None:
    pid = await _proc(kernel, "shell:*:run")
    with pytest.raises(InvalidArgument):
        await run(kernel, pid, ["echo"], env)  # through a tool: its schema or the syscall
    with pytest.raises(InvalidArgument):  # the syscall itself
        await kernel.dispatcher.run(kernel.process(pid), None, "shell.run",
                                    {"argv": ["echo"], "env": env})
    assert _records(kernel, pid, "rejected") and not _records(kernel, pid, "intent")
    assert (await run(kernel, pid, ["echo"], {"TZ": "UTC"}))["exit_code"] == 0


async def test_deny_always_with_a_scope_for_the_command_whatever_its_environment(
        kernel: Kernel) -> None:
    _repo(kernel)
    pid = await _proc(kernel, ask("GIT_PAGER=* git var *"))
    argv = ["git", "var", "GIT_PAGER"]

    async def refused() -> None:
        with pytest.raises(ApprovalDenied):
            await run(kernel, pid, argv, {"GIT_PAGER": "cat"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refused)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.deny(kernel.approvals()[0]["id"], always=True, scope="git var *")
    for env in ({}, {"GIT_PAGER": "less"}):
        with pytest.raises(NotCapable, match="denied by a rule"):
            await run(kernel, pid, argv, env)
    assert kernel.approvals() == []


async def test_the_environment_is_bounded_in_all(kernel: Kernel) -> None:
    pid = await _proc(kernel, "shell:*:run")
    env = {f"V{i}": "x" * MAX_ENV_VALUE for i in range(MAX_ENV_BYTES // MAX_ENV_VALUE + 1)}
    with pytest.raises(InvalidArgument, match="over"):
        await kernel.dispatcher.run(kernel.process(pid), None, "shell.run",
                                    {"argv": ["echo"], "env": env})
    with pytest.raises(InvalidArgument, match="program name"):
        await kernel.dispatcher.run(kernel.process(pid), None, "shell.run",
                                    {"argv": ["x" * (MAX_PROGRAM + 1)]})
    assert len(_records(kernel, pid, "rejected")) == 2 and not _records(kernel, pid, "intent")


async def test_a_huge_command_is_refused_before_any_record_holds_it(
        kernel: Kernel, db_path: Path) -> None:
    """An argv may fill a frame (1024 words of 64 KiB): refused, it once wrote its whole
    command into the denial's resource and again into its message (12 MB each, for one
    attempt). The command, as its resource shows it, is bounded like any resource."""
    _repo(kernel)
    pid = await _proc(kernel, "shell:git status:run")
    with pytest.raises(InvalidArgument, match=f"over {MAX_COMMAND}"):
        await run(kernel, pid, ["git", *["x" * 60_000] * 200])
    [rejected] = _records(kernel, pid, "rejected")
    assert rejected["resource"] is None and not _records(kernel, pid, "intent")
    [size] = sqlite3.connect(db_path).execute(
        "SELECT max(length(resource) + length(detail)) FROM audit WHERE pid=?", (pid,)
    ).fetchone()
    assert size < 32 << 10
    # the neighbours: the command the capability names runs, and a long one is checked whole
    assert (await run(kernel, pid, ["git", "status"]))["exit_code"] == 0
    with pytest.raises(NotCapable):
        await run(kernel, pid, ["git", "status", "x" * 65_000, "y" * 65_000])
    assert len(_records(kernel, pid, "denied")[-1]["resource"]) > 130_000


async def test_home_is_not_where_the_process_can_plant_files(kernel: Kernel) -> None:
    """Programs read start-up files from HOME (~/.gitconfig, ~/.ssh/config, ~/.curlrc):
    HOME is a fresh empty directory, so a process that may write files cannot plant them."""
    host = _repo(kernel)
    pid = await _proc(kernel, "shell:git status:run", "shell:ls -A:run")
    gitconfig = f"[core]\n\tfsmonitor = touch {host}/pwned; false\n"
    await kernel.call_tool(pid, "write_file", {"path": "/.gitconfig", "data": gitconfig})
    assert (await run(kernel, pid, ["git", "status"]))["exit_code"] == 0
    assert not (host / "pwned").exists()
    out = await run(kernel, pid, ["ls", "-A"])
    assert ".gitconfig" in out["stdout"]  # the neighbour: the cwd is the fs root as before
