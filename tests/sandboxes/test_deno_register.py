"""A TypeScript tool's registration is checked in the sandbox that will run it (issue #17).

The check runs in a sandbox bound to the authority of the tool's first (top-level) call, which
keeps the tool loaded for it; a failed check kills that sandbox, so nothing the refused module
left can serve anyone; a tool of another authority never meets it. The service's private
DENO_DIR is seeded from a runtime-only cache that never holds a tool's source.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Conflict, InvalidArgument, Kernel, NotCapable
from broker.kernel.image import AgentImage
from broker.kernel.invocation import authority_of
from broker.store.audit import CLOSES
from sandboxes import deno_cache
from sandboxes.deno import DenoSandbox
from sandboxes.deno_launch import MAIN_SOURCE, RUNTIME_DIR, find_deno
from tests.sandboxes.conftest import LIMITS, agent, audit_of, kernel_over, killed_since
from tests.sandboxes.test_deno import ECHO, alive, register
from tests.sandboxes.test_deno_pool import emitting

SANDBOX_ID = "export default async function run() { return performance.timeOrigin; }"


def idle_of(deno: DenoSandbox, authority_prefix: str) -> list:
    return [sb for (key, _), sbs in deno.pool.idle.items()
            if key is not None and key.startswith(authority_prefix) for sb in sbs]


async def test_the_check_runs_in_the_sandbox_that_serves_the_first_call(
        dk: Kernel, deno: DenoSandbox) -> None:
    await deno.warm()
    pid = agent(dk)
    started = deno.stats["started"]
    await register(dk, pid, "who", SANDBOX_ID)
    [checked] = idle_of(deno, f"{pid}/")
    source_hash = hashlib.sha256(SANDBOX_ID.encode()).hexdigest()
    assert checked.loaded == {"who": source_hash}  # loaded for the first call
    warm = deno.stats["warm_acquires"]
    first = await dk.call_tool(pid, "who", {})
    assert deno.stats["warm_acquires"] == warm + 1  # the checked sandbox, not a new one
    assert idle_of(deno, f"{pid}/") == [checked]
    assert deno.stats["started"] <= started + 1  # the spare's replacement, nothing else
    # another process's tool is checked elsewhere: it never meets this one's sandbox
    other = agent(dk)
    await register(dk, other, "who", SANDBOX_ID)
    assert idle_of(deno, f"{other}/") and idle_of(deno, f"{other}/")[0] is not checked
    assert await dk.call_tool(other, "who", {}) != first
    # a manifest is another authority: its check takes another sandbox too
    await register(dk, pid, "narrow", SANDBOX_ID, manifest=["clock:*:read"])
    assert await dk.call_tool(pid, "narrow", {}) != first
    assert await dk.call_tool(pid, "who", {}) == first


@pytest.mark.parametrize("source", [
    "throw new Error('refused');\nexport default async function run() {}",
    "export const x = 1;",  # no run
    # leaves a timer that would outlive the check
    "setTimeout(() => console.log('late'), 50);\nexport default 42;",
    "await new Promise(() => {});\nexport default async function run() {}",
])
async def test_a_failed_check_kills_the_sandbox_it_ran_in(
        dk: Kernel, deno: DenoSandbox, source: str) -> None:
    pid = agent(dk)
    await register(dk, pid, "good", ECHO)
    assert await dk.call_tool(pid, "good", {"a": 1}) == {"a": 1}
    [warm] = idle_of(deno, f"{pid}/")  # the authority's sandbox, which the check takes
    with pytest.raises(InvalidArgument):
        await register(dk, pid, "bad", source)
    with trio.fail_after(5):
        await warm.gone.wait()
    assert not alive(warm.process.pid)
    assert warm not in idle_of(deno, f"{pid}/")
    assert "bad" not in {t["name"] for t in dk.list_tools(pid)}
    refused = [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"]
    assert refused[-1]["detail"]["ok"] is False
    assert refused[-1]["detail"]["error"] == "INVALID_ARGUMENT"
    # the neighbour: the good tool still runs, in a fresh sandbox
    assert await dk.call_tool(pid, "good", {"b": 2}) == {"b": 2}


async def test_a_check_past_its_timeout_is_refused_and_its_sandbox_killed(
        dk: Kernel, deno: DenoSandbox) -> None:
    pid = agent(dk)
    killed = deno.stats["killed"]
    with pytest.raises(InvalidArgument, match="did not finish loading within 1000 ms"):
        await register(dk, pid, "spin", "while (true) {}\nexport default async function run() {}")
    await killed_since(deno, killed)
    assert idle_of(deno, f"{pid}/") == []
    await register(dk, pid, "good", ECHO)
    assert await dk.call_tool(pid, "good", {"k": 1}) == {"k": 1}


async def test_the_runtime_cache_seeds_a_service_and_never_holds_a_tool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    secret = "tool-source-marker-5f1c"
    source = f"export default async function run() {{ return '{secret}'; }}"
    templates = tmp_path / "cache" / "libos" / "deno-runtime"
    for round_ in range(2):
        async with DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0) as deno:
            service_dir = Path(deno._env["DENO_DIR"])
            made = deno_cache.template_dir(deno.argv(deno.memory_mb, deno.runtime))
            if round_ == 1:  # seeded before its first sandbox starts
                with trio.fail_after(10):
                    await deno._seeded.wait()
                names = [p.name for p in made.iterdir()]
                cached = set(names) - deno_cache._not_cached_code(str(made), names)
                assert cached and cached <= {p.name for p in service_dir.iterdir()}
            async with kernel_over(tmp_path / f"k{round_}", deno) as k:
                pid = agent(k)
                await register(k, pid, "t", source)
                assert await k.call_tool(pid, "t", {}) == secret
                with trio.fail_after(30):  # (the bundled runtime needs no compiled module)
                    while not made.is_dir():
                        await trio.sleep(0.05)
            holding = {p.name for p in service_dir.rglob("*")
                       if p.is_file() and secret.encode() in p.read_bytes()}
            # No compiled module of it (`DenoSandbox.emit_cache`: a file per registration,
            # never read again) and no V8 code cache of it (keyed by its data: URL, the source)
            assert not any(name.endswith(".js") or name.startswith("v8_code_cache")
                           for name in holding), holding
        assert not service_dir.exists()  # and it went with the service
        [template] = [p for p in templates.iterdir() if not p.name.startswith(".")]
        assert template == made
        assert not any(secret.encode() in p.read_bytes()
                       for p in template.rglob("*") if p.is_file())


@pytest.mark.parametrize("plant", ["others-may-write", "parent-others-may-write",
                                   "another-owner", "a-link"])
async def test_a_runtime_cache_others_may_write_never_seeds_a_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    """Deno trusts its DENO_DIR's compiled files (their check is an unkeyed checksum): whoever
    can write the template runs code in every sandbox of every authority, before the runtime
    locks itself down. A template that is not this user's alone to write is not copied."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    deno = DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0)
    template = deno_cache.template_dir(deno.argv(deno.memory_mb, deno.runtime))
    elsewhere = tmp_path / "elsewhere"
    for where in (template, elsewhere):
        (where / "gen").mkdir(parents=True, mode=0o700)
        (where / "gen" / "planted.js").write_text("planted")
        where.chmod(0o700)
    template.parent.chmod(0o700)
    if plant == "others-may-write":
        template.chmod(0o777)
    elif plant == "parent-others-may-write":
        template.parent.chmod(0o777)
    elif plant == "another-owner":
        for path in (template, template / "gen", template / "gen" / "planted.js"):
            os.chown(path, 65534, 65534)
    else:
        shutil.rmtree(template)
        template.symlink_to(elsewhere)
    async with deno:
        with trio.fail_after(10):
            await deno._seeded.wait()
        service_dir = Path(deno._env["DENO_DIR"])
        assert not (service_dir / "gen" / "planted.js").exists()
        async with kernel_over(tmp_path / "k", deno) as k:  # the neighbour: tools still run
            pid = agent(k)
            await register(k, pid, "echo", ECHO)
            assert await k.call_tool(pid, "echo", {"a": 1}) == {"a": 1}


async def test_a_runtime_cache_of_this_user_alone_seeds_a_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the same template, this user's alone, is copied."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    deno = DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0)
    template = deno_cache.template_dir(deno.argv(deno.memory_mb, deno.runtime))
    (template / "gen").mkdir(parents=True, mode=0o700)
    (template / "gen" / "planted.js").write_text("planted")
    template.chmod(0o700)
    template.parent.chmod(0o700)
    async with deno:
        with trio.fail_after(10):
            await deno._seeded.wait()
        assert (Path(deno._env["DENO_DIR"]) / "gen" / "planted.js").exists()


def test_a_service_that_rewrites_a_linked_compiled_module_leaves_the_template_as_it_was(
        tmp_path: Path) -> None:
    """A seed links the template's compiled modules into the service's DENO_DIR (same inode).
    Deno replaces a cache file whole when it compiles that module again (a changed source), so
    the template's file keeps what it held: a link never lets a service write the template."""
    module = tmp_path / "src" / "m.ts"
    module.parent.mkdir()
    module.write_text("const x: string = 'from-the-template'; console.log(x);\n")
    template, service = tmp_path / "template", tmp_path / "service"

    def run(deno_dir: Path) -> str:
        return subprocess.run([find_deno(), "run", "--quiet", "--no-config", str(module)],
                              env={"DENO_DIR": str(deno_dir), "NO_COLOR": "1"},
                              capture_output=True, text=True, check=True).stdout

    assert run(template) == "from-the-template\n"
    template.chmod(0o700)
    template.parent.chmod(0o700)
    assert deno_cache.seed(str(service), template)
    [kept] = template.joinpath("gen").rglob("m.ts.js")
    linked = service / kept.relative_to(template)
    assert linked.stat().st_ino == kept.stat().st_ino  # linked, not copied
    module.write_text("const x: string = 'from-the-service'; console.log(x);\n")
    assert run(service) == "from-the-service\n"
    assert "from-the-service" in linked.read_text()  # the service's own copy now
    assert "from-the-template" in kept.read_text()  # the template's, as it was
    assert "from-the-service" not in kept.read_text()


async def test_a_tool_registered_by_a_narrowed_tool_is_never_checked_under_more_authority(
        dk: Kernel, deno: DenoSandbox) -> None:
    """A tool whose manifest holds only tool:ts:register registers a tool with no manifest.
    Its top-level code must not run in a sandbox of the process's whole authority (which then
    serves the planner's calls): the registrant never had that authority."""
    pid = agent(dk)
    await register(dk, pid, "echo", ECHO)
    assert await dk.call_tool(pid, "echo", {"a": 1}) == {"a": 1}  # a sandbox of pid's own
    registrar = """export default async function run(args: any, libos: any) {
  return await libos.tool.register("planted", "ts", args.source);
}"""
    await register(dk, pid, "registrar", registrar, manifest=["tool:ts:register"])
    planted = "export default async function run() { return 'planted ran'; }"
    got = await dk.call_tool(pid, "registrar", {"source": planted})
    assert got["name"] == "planted"
    whole = authority_of(pid, 0, ())
    assert not [sb for (key, _), sbs in deno.pool.idle.items() if key == whole
                for sb in sbs if "planted" in sb.loaded]
    assert [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"][-1][
        "detail"]["ok"] is True
    # the neighbours: the planner's own call of it, and its other tools, run
    assert await dk.call_tool(pid, "planted", {}) == "planted ran"
    assert await dk.call_tool(pid, "echo", {"b": 2}) == {"b": 2}


@pytest.mark.parametrize("bomb", [
    "const a: unknown[] = []; while (true) a.push(new Array(10000).fill({x: 1}));",
    "const a: Uint8Array[] = []; while (true) { const b = new Uint8Array(64 << 20); "
    "b.fill(1); a.push(b); }",
    # a chain of microtasks that goes on after the module has loaded and the check answered
    "(async () => { const a: unknown[] = []; for (;;) { await null; "
    "a.push(new Array(1e4).fill(1)); } })();",
])
async def test_a_memory_bomb_at_registration_is_refused_and_its_sandbox_killed(
        dk: Kernel, deno: DenoSandbox, bomb: str) -> None:
    """A tool's top-level code runs in the sandbox of its first call now: a memory bomb there
    (in V8's heap, outside it in ArrayBuffers, or in a timer the check leaves) is refused or
    killed, leaves no sandbox of the authority behind it, and the process goes on."""
    pid = agent(dk)
    killed = deno.stats["killed"]
    with contextlib.suppress(InvalidArgument):  # refused at the check, or killed after it
        await register(dk, pid, "bomb", f"{bomb}\nexport default async function run() {{}}")
    await killed_since(deno, killed, 20)
    with trio.fail_after(10):
        while [sb for sb in idle_of(deno, f"{pid}/") if "bomb" in sb.loaded]:
            await trio.sleep(0.02)
    await register(dk, pid, "good", ECHO, replace=True)
    assert await dk.call_tool(pid, "good", {"k": 1}) == {"k": 1}


async def test_a_manifest_beyond_the_process_runs_no_top_level_code(
        dk: Kernel, deno: DenoSandbox) -> None:
    """A tool whose manifest asks for what the registering process lacks is refused by the
    syscall's check, before any sandbox is bound to the authority it names or its code runs."""
    pid = agent(dk)
    await deno.warm()
    started, spares = deno.stats["started"], len(deno.pool.ready)
    with pytest.raises(NotCapable):
        await register(dk, pid, "wide", "console.log('top level ran');\n" + ECHO,
                       manifest=["fs:/etc/**:read"])
    assert not [sb for sbs in deno.pool.idle.values() for sb in sbs if "wide" in sb.loaded]
    assert deno.stats["started"] == started and len(deno.pool.ready) == spares
    denied = [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "denied"]
    assert denied and denied[-1]["detail"]["error"] == "NOT_CAPABLE"
    assert "wide" not in {t["name"] for t in dk.list_tools(pid)}
    # the neighbour: a manifest within the process's authority is checked and runs
    await register(dk, pid, "narrow", ECHO, manifest=["clock:*:read"])
    assert await dk.call_tool(pid, "narrow", {"n": 1}) == {"n": 1}


SLOW_CHECK = ("await new Promise((done) => setTimeout(done, 400));\n"
              "export default async function run() { return 1; }")


async def test_an_exec_during_the_check_keeps_the_tool_out_of_the_new_image(
        dk: Kernel, deno: DenoSandbox) -> None:
    """The check is awaited, and the process may exec into another image meanwhile: the tool,
    registered by the old image's authority, never lands in the new image's table."""
    await dk.register_image(AgentImage("execer", tools=("register_tool", "exec", "whoami"),
                                       needs=("tool:*:register,call", "proc:*:exec")))
    await dk.register_image(AgentImage("after", tools=("whoami",)))
    pid = dk.spawn("execer", caps=["tool:*:register,call", "proc:after:exec"])
    await deno.warm()
    outcome: dict[str, Any] = {}

    async def register_slowly() -> None:
        try:
            outcome["registered"] = await register(dk, pid, "late", SLOW_CHECK)
        except Conflict as exc:
            outcome["refused"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(register_slowly)
        with trio.fail_after(10):
            while not [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "intent"]:
                await trio.sleep(0.01)  # the check is under way (its module waits 400 ms)
        await dk.call_tool(pid, "exec", {"image": "after"})
    assert "refused" in outcome, outcome
    assert "late" not in dk.process(pid).tools
    assert [r for r in audit_of(dk, pid, "tool.register") if r["phase"] != "intent"][-1][
        "phase"] == "outcome" and not [
        r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"][-1][
        "detail"]["ok"]
    assert (await dk.call_tool(pid, "whoami", {}))["pid"] == pid  # the new image still works


def _cache_files(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Each file under `directory`: its content's digest and inode."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).digest(),
                                            p.stat().st_ino)
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


# What a tool may try against a compiled runtime module its service's DENO_DIR shares (by a
# hard link) with the template every later service links too.
LINKED_FILE_ATTACKS = {
    "write": "await Deno.writeTextFile(args.path, 'export const pwned = 1;');",
    "append": "await Deno.writeTextFile(args.path, ';globalThis.pwned = 1;', {append: true});",
    "open for write": "Deno.openSync(args.path, {write: true}).writeSync(new Uint8Array([59]));",
    "truncate": "await Deno.truncate(args.path, 0);",
    "remove": "await Deno.remove(args.path);",
    "rename over": "await Deno.rename(args.path, args.path + '.x');",
    "chmod": "await Deno.chmod(args.path, 0o666);",
    "link": "await Deno.link(args.path, args.path + '.x');",
    "import a runtime module not loaded": "return Object.keys(await import(args.url));",
}


@pytest.mark.parametrize("attack", sorted(LINKED_FILE_ATTACKS))
async def test_a_tool_cannot_change_the_compiled_modules_its_deno_dir_shares_with_the_template(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    """Attack on the linked runtime cache: a service's compiled runtime modules are the
    template's own inodes, so a write through one would change what every later service
    runs. A tool (told the path, as if it guessed it) is refused every way of touching one,
    and what it makes Deno write (a module of its own, compiled and cached) goes to new files:
    the template, and the service's linked files, keep their bytes and inodes. Run over the
    runtime's modules (main.ts, as the Pyodide host loads them): the bundled runtime, plain
    JavaScript, leaves no compiled module to link."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    async with DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0,
                           runtime=MAIN_SOURCE) as deno:
        template = deno_cache.template_dir(deno.argv(deno.memory_mb, deno.runtime))
        async with kernel_over(tmp_path / "k0", deno) as k:
            pid = agent(k)
            await register(k, pid, "echo", ECHO)
            assert await k.call_tool(pid, "echo", {"a": 1}) == {"a": 1}
            with trio.fail_after(30):
                while not (template / "gen").is_dir():
                    await trio.sleep(0.05)
    before = _cache_files(template)
    async with DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0,
                           runtime=MAIN_SOURCE) as deno:
        with trio.fail_after(10):
            await deno._seeded.wait()
        service = Path(deno._env["DENO_DIR"])
        linked = [p for p in (service / "gen").rglob("*.js") if p.stat().st_nlink > 1]
        assert linked  # the service shares the template's compiled modules
        target = max(linked, key=lambda p: p.stat().st_size)
        source = (RUNTIME_DIR / "check.ts").as_uri()  # (one loaded is open to tools, frozen)
        async with kernel_over(tmp_path / "k1", deno) as k:
            pid = agent(k)
            attacker = ("export default async function run(args: any) {\n"
                        f"{LINKED_FILE_ATTACKS[attack]}\n  return 'done';\n}}")
            await register(k, pid, "attack", attacker)
            with pytest.raises(NotCapable):
                await k.call_tool(pid, "attack", {"path": str(target), "url": source})
            outcomes = [r for r in audit_of(k, pid, "tool.call") if r["phase"] in CLOSES]
            assert outcomes[-1]["detail"]["error"] == "NOT_CAPABLE"
            # a neighbour's tool, compiled and cached by Deno in this DENO_DIR, still works
            await register(k, pid, "echo", ECHO.replace("run(", "run( /* new to the cache */"))
            assert await k.call_tool(pid, "echo", {"still": "here"}) == {"still": "here"}
        assert target.stat().st_ino == before[str(target.relative_to(service))][1]
    assert _cache_files(template) == before


async def test_sandbox_starts_leave_a_bounded_deno_dir(tmp_path: Path) -> None:
    """Attack on the spare's warm-up (an import new to Deno's cache): a tool can make the
    service start sandbox after sandbox (each call that hits a limit kills its sandbox; each
    authority takes a spare), and a module unique to each start would leave a compiled file
    and a code-cache entry per start in the service's DENO_DIR for as long as the broker
    runs. Many starts leave the same few compiled modules as one (seen where Deno keeps its
    emits: the driver's own sandboxes keep none, but would leave a module-analysis row each)."""
    deno = emitting(DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0))
    async with deno, kernel_over(tmp_path, deno) as k:
        for i in range(8):  # each process an authority of its own: a sandbox each
            pid = agent(k)
            await register(k, pid, "echo", ECHO)
            assert await k.call_tool(pid, "echo", {"i": i}) == {"i": i}
        with pytest.raises(NotCapable):  # and one the call's refusal kills
            await register(k, pid, "bad", "export default async function run() {"
                           " return Deno.readTextFileSync('/etc/passwd'); }")
            await k.call_tool(pid, "bad", {})
        await deno.warm()
        started = deno.stats["started"]
        compiled = list((Path(deno._env["DENO_DIR"]) / "gen" / "data").glob("*.js"))
    assert started >= 9
    assert len(compiled) <= 4, f"{len(compiled)} modules compiled for {started} sandboxes"


async def test_a_spare_warming_up_never_takes_a_real_call_s_place(tmp_path: Path) -> None:
    """A spare's warm-up checks and calls a tool of its own (its answers go nowhere): a tool
    checked and called while a just-started spare may still be warming up makes syscalls as
    its own call, and a tool named `warm-up` is the registrant's, not the runtime's."""
    source = ("export default async function run(args: { tag: string }, libos: any) {"
              " const now = await libos.clock.now(); return [args.tag, typeof now]; }")
    deno = DenoSandbox(memory_mb=LIMITS.memory_mb, check_timeout=5.0)
    async with deno, kernel_over(tmp_path, deno) as k:
        for i in range(6):
            await deno.warm()  # a spare that has just said hello: its warm-up may be under way
            pid = agent(k)  # a new authority: it takes that spare
            await register(k, pid, "warm-up", source)
            assert await k.call_tool(pid, "warm-up", {"tag": f"t{i}"}) == [f"t{i}", "number"]
