"""Attacks from inside the Deno sandbox (docs/DESIGN.md, invariants 1, 2, 6 and 8).

Each attack ends in the right typed error (or a harmless result), nothing leaves the sandbox,
the audit shows it where a syscall was involved, and meanwhile another process's calls and
syscalls keep being served. Forged frames come from a hostile runtime standing in for
ts-runtime/main.ts (a tool cannot reach the real stdout): each is refused, kills its sandbox
and is attributed to no other call or process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    AgentImage,
    InvalidArgument,
    Kernel,
    LibosError,
    LimitExceeded,
    NotCapable,
    ProtocolError,
    SandboxCrashed,
)
from broker.store.audit import CLOSES, OPENS
from sandboxes.deno import DenoSandbox
from sandboxes.deno_launch import MAIN, MAIN_SOURCE, RUNTIME_DIR
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import (
    LIMITS,
    NEEDS,
    Served,
    agent,
    audit_of,
    kernel_over,
    killed_since,
    logs,
)
from tests.sandboxes.test_deno import ECHO, SANDBOX_ID, alive, register, tool

DENO_SPARES = 2  # attacks kill sandboxes: keep more ready

HOSTILE = Path(__file__).with_name("deno_hostile_runtime.ts")
TICK = """export default async function run(args: {i: number}, libos: any) {
  const t = await libos.clock.now();
  await libos.fs.write(`/data/tick-${args.i}`, String(t));
  return args.i;
}"""


async def meanwhile(kernel: Kernel, attack: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """Run `attack` while another process calls a syscall-making tool in a loop. Returns what
    the attack raised or returned, and how many of the other's calls completed meanwhile
    (all of them must succeed)."""
    other = agent(kernel)
    await register(kernel, other, "tick", TICK)
    await kernel.call_tool(other, "tick", {"i": 0})  # warm
    done = trio.Event()
    served = 0

    async def serve() -> None:
        nonlocal served
        i = 1
        while not done.is_set() or i < 3:
            assert await kernel.call_tool(other, "tick", {"i": i}) == i
            if not done.is_set():
                served += 1
            i += 1

    outcome: Any = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            outcome = await attack()
        except Exception as exc:
            outcome = exc
        finally:
            done.set()
    ticks = [r for r in kernel.audit(other) if r["syscall"] == "fs.write"
             and r["phase"] == "outcome"]
    assert ticks and all(r["detail"]["ok"] for r in ticks)
    return outcome, served


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP listener on localhost that records every connection it gets."""
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        with trio.move_on_after(1):
            seen.append(await stream.receive_some(1024))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        yield port, seen
        nursery.cancel_scope.cancel()


def body(code: str) -> str:
    return f"export default async function run(args: any, libos: any) {{\n{code}\n}}"


# -- Deno's own sandbox: no permission at all ---------------------------------------------------

@pytest.mark.parametrize(("name", "code"), [
    ("read /etc/passwd", "return await Deno.readTextFile('/etc/passwd');"),
    ("read sync", "return Deno.readFileSync('/etc/passwd');"),
    ("write a file", "await Deno.writeTextFile(args.mark, 'pwned');"),
    ("env get", "return Deno.env.get('HOME');"),
    ("env all", "return Deno.env.toObject();"),
    ("fetch", "return await (await fetch(`http://127.0.0.1:${args.port}/`)).text();"),
    ("fetch remote", "return await (await fetch('https://example.com/')).text();"),
    ("connect", "await Deno.connect({hostname: '127.0.0.1', port: args.port});"),
    ("listen", "Deno.listen({port: 0});"),
    ("resolve dns", "return await Deno.resolveDns('example.com', 'A');"),
    ("command", "await new Deno.Command('/bin/sh', {args: ['-c', `touch ${args.mark}`]})"
                ".output();"),
    ("dlopen", "Deno.dlopen('libc.so.6', {getpid: {parameters: [], result: 'i32'}});"),
    ("hostname", "return Deno.hostname();"),
    ("import a file", "return await import('file:///etc/passwd');"),
    ("import text", "return (await import('file:///etc/passwd', {with: {type: 'text'}}))"
                    ".default;"),
    ("import json", "return (await import(args.json, {with: {type: 'json'}})).default;"),
    ("import npm:", "return await import('npm:left-pad');"),
    ("import jsr:", "return await import('jsr:@std/path');"),
    ("import http:", "return await import(`http://127.0.0.1:${args.port}/x.js`);"),
    ("import https:", "return await import('https://deno.land/std/path/mod.ts');"),
    ("worker asking for permissions",
     "new Worker('data:application/javascript,1', {type: 'module', "
     "deno: {permissions: {read: true, net: true}}});"),
    ("worker", "new Worker('data:application/javascript,1', {type: 'module'});"),
    ("eval", "return eval('1 + 1');"),
    ("new Function", "return new Function('return 1')();"),
    ("open stdin", "return Deno.openSync('/dev/stdin').readSync(new Uint8Array(10));"),
    ("open stdout", "Deno.openSync('/proc/self/fd/1', {write: true});"),
    ("exit", "Deno.exit(0);"),
])
async def test_deno_apis_are_not_capable(dk: Kernel, tmp_path: Path, name: str, code: str,
                                         listener: tuple[int, list[bytes]]) -> None:
    port, seen = listener
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"key": "hunter2"}))
    mark = tmp_path / "pwned"
    pid = agent(dk)
    args = {"port": port, "mark": str(mark), "json": secret.as_uri()}
    with pytest.raises(NotCapable) as info:
        await tool(dk, pid, body(code), args)
    assert "hunter2" not in info.value.message and "root:x" not in info.value.message
    assert not mark.exists()
    assert seen == []
    # The tool made no syscall; its tool.call is audited with the refusal.
    assert [r for r in dk.audit(pid) if r["tool"] == "t"] == []
    outcome = [r for r in dk.audit(pid) if r["syscall"] == "tool.call"
               and r["phase"] in CLOSES]
    assert outcome[-1]["detail"]["error"] == "NOT_CAPABLE"
    # and the sandbox still serves the process
    assert await tool(dk, pid, ECHO, {"ok": 1}, name="echo") == {"ok": 1}


@pytest.mark.parametrize("spec", [
    "file:///etc/passwd", "npm:left-pad", "jsr:@std/path", "https://deno.land/x/mod.ts"])
async def test_static_imports_fail_at_registration(dk: Kernel, spec: str) -> None:
    pid = agent(dk)
    source = (f"import x from {spec!r} with {{type: 'text'}};\n"
              "export default async function run() { return x; }")
    with pytest.raises(InvalidArgument) as info:
        await register(dk, pid, "t", source)
    assert "root:x" not in info.value.message
    assert "t" not in {t["name"] for t in dk.list_tools(pid)}


@pytest.mark.parametrize("top_level", [
    "const a: unknown[] = []; while (true) a.push(new Array(10000).fill({x: 1}));",
    "while (true) {}",
    "await new Promise(() => {});",
    "globalThis.postMessage({nonce: 'guess', ok: true, exports: ['default'], "
    "defaultType: 'function'});",
])
async def test_top_level_attacks_at_registration(dk: Kernel, top_level: str) -> None:
    pid = agent(dk)
    with pytest.raises(InvalidArgument):
        await register(dk, pid, "t", f"{top_level}\nexport const x = 1;")
    # the checker (another process, a fresh Worker per check) is still there or back
    await register(dk, pid, "good", ECHO)
    assert await dk.call_tool(pid, "good", {"k": 1}) == {"k": 1}


def running_threads(pids: set[int]) -> int:
    """Threads of the live processes among `pids` that are running or want to (state R):
    a spinning thread always is, however loaded the machine is."""
    count = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):
                count += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
    return count


@pytest.mark.parametrize(("top_level", "accepted"), [
    ("while (true) {}", False),  # past the check's timeout
    ("setTimeout(() => { while (true) {} }, 0);", True),  # starts as the check answers
    # microtasks that never yield to the event loop, going on after the module has loaded
    # (they spun in the sandbox kept for the first call, whose next check was blamed)
    ("(async () => { for (;;) await null; })();", False),
])
async def test_a_tool_that_spins_at_registration_leaves_nothing_running(
        dk: Kernel, deno: DenoSandbox, top_level: str, accepted: bool) -> None:
    """A Worker that spins outlives terminate(): each registration used to leave one in the
    checker, a CPU held for good (three of them held both of this machine's). A checker
    checks one tool and is killed."""
    pid = agent(dk)
    pids: set[int] = set()
    for name in ("spin1", "spin2"):
        try:
            await register(dk, pid, name, f"{top_level}\nexport default async function run() {{}}")
        except InvalidArgument as exc:
            assert not accepted and "did not finish loading" in exc.message
        else:
            assert accepted
        pids |= {sb.process.pid for sb in deno._all}
    outcomes = [r["detail"] for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"]
    assert [o["ok"] for o in outcomes] == [accepted, accepted]
    samples = []
    for _ in range(20):
        await trio.sleep(0.05)
        samples.append(running_threads(pids))
    assert sorted(samples)[10] == 0, samples  # nothing spins (a busy machine may catch one)
    # the neighbour: registration and calls go on
    await register(dk, pid, "good", ECHO)
    assert await dk.call_tool(pid, "good", {"k": 1}) == {"k": 1}


async def test_the_channel_and_the_internals_are_out_of_reach(dk: Kernel) -> None:
    pid = agent(dk)
    code = """
  const D = Deno as any;
  const seen: Record<string, unknown> = {
    stdout: typeof D.stdout, stdin: typeof D.stdin, internal: typeof D.internal,
    internalSymbol: typeof D[Symbol.for("Deno.internal")], core: typeof D.core,
    bootstrap: typeof (globalThis as any).__bootstrap, args: typeof D.args,
    mainModule: typeof D.mainModule, process: typeof (globalThis as any).process,
    consoleWrites: Object.isFrozen(console),
  };
  const perms: Record<string, string> = {};
  for (const name of ["read", "write", "net", "env", "run", "ffi", "sys", "import"]) {
    perms[name] = (await Deno.permissions.request({name} as any)).state;
  }
  seen.perms = perms;
  seen.runtimeExports = [];
  for (const url of RUNTIME_URLS) {  // (the runtime this test runs: bundled, and its source)
    seen.runtimeExports.push(...Object.keys(await import(url).catch(() => ({}))));
  }
  return seen;""".replace("RUNTIME_URLS", json.dumps([MAIN.as_uri(), MAIN_SOURCE.as_uri()]))
    got = await tool(dk, pid, body(code))
    assert got["stdout"] == got["stdin"] == got["internal"] == "undefined"
    assert got["internalSymbol"] == got["core"] == got["bootstrap"] == "undefined"
    assert got["process"] == "undefined"
    assert got["consoleWrites"] is True
    assert set(got["perms"].values()) == {"denied"}
    assert got["runtimeExports"] == []


async def test_node_builtins_cannot_write_to_the_channel(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    sandbox = await dk.call_tool(pid, "whoami_ts", {})
    code = """
  const tries: [string, () => Promise<unknown>][] = [
    ["process", async () => (globalThis as any).process.stdout.write("RAW\\n")],
    ["node:process", async () => (await import("node:process")).default.stdout.write("RAW")],
    ["node:fs", async () => (await import("node:fs")).writeSync(1, "RAW")],
    ["node:child_process",
     async () => (await import("node:child_process")).execSync("id").toString()],
  ];
  const out: string[] = [];
  for (const [name, f] of tries) {
    try { await f(); out.push(`${name} wrote`); } catch (e: any) { out.push(e.name); }
  }
  return out;"""
    got = await tool(dk, pid, body(code))
    assert not [x for x in got if "wrote" in x]
    # the channel is intact: the same sandbox answers the next call
    assert await dk.call_tool(pid, "whoami_ts", {}) == sandbox


async def test_syscalls_cannot_reach_another_process(dk: Kernel) -> None:
    a = agent(dk, ["fs:/data/**:read,write", "tool:*:register,call"])
    b = agent(dk)
    code = """
  const out: string[] = [];
  for (const f of [() => libos.proc.signal(args.b, "kill"),
                   () => libos.obj.get("x", `proc/${args.b}`),
                   () => libos.syscall("proc.self", {pid: args.b})]) {
    try { await f(); out.push("ok"); } catch (e: any) { out.push(e.code); }
  }
  return out;"""
    got = await tool(dk, a, body(code), {"b": b})
    assert got == ["NOT_CAPABLE", "NOT_CAPABLE", "INVALID_ARGUMENT"]
    assert dk.process(b).alive
    refused = [r for r in dk.audit(a) if r["tool"] == "t"]
    assert not [r for r in refused if r["detail"].get("ok") is True]
    assert {r["detail"]["error"] for r in refused if "error" in r["detail"]} == {
        "NOT_CAPABLE", "INVALID_ARGUMENT"}
    assert {r["syscall"] for r in refused} == {"proc.signal", "obj.get", "proc.self"}
    assert all(r["pid"] == a for r in refused)


# -- resources: each limit, while another process is served ------------------------------------

async def test_infinite_loop(dk: Kernel, served: Served) -> None:
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    await dk.call_tool(pid, "whoami_ts", {})
    sandbox = served.last("whoami_ts")
    await register(dk, pid, "spin", body("while (true) {}"))
    outcome, served = await meanwhile(dk, lambda: dk.call_tool(pid, "spin", {}))
    assert isinstance(outcome, LimitExceeded) and "deadline" in outcome.message
    assert served >= 5
    assert not alive(sandbox)


@pytest.mark.slow_ok
async def test_heap_bomb(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "bomb", body(
        "const a: unknown[] = []; while (true) a.push(new Array(10000).fill({x: 1}));"))
    outcome, _ = await meanwhile(dk, lambda: dk.call_tool(pid, "bomb", {}))
    assert isinstance(outcome, LimitExceeded) and "heap" in outcome.message
    assert await tool(dk, pid, ECHO, {"after": True}, name="echo") == {"after": True}


async def test_array_buffer_bomb(dk: Kernel) -> None:
    # ArrayBuffers live outside V8's heap cap; RLIMIT_DATA bounds them.
    pid = agent(dk)
    await register(dk, pid, "bomb", body(
        "const a: Uint8Array[] = []; while (true) { const b = new Uint8Array(64 << 20); "
        "b.fill(1); a.push(b); }"))
    outcome, _ = await meanwhile(dk, lambda: dk.call_tool(pid, "bomb", {}))
    assert isinstance(outcome, LimitExceeded)


@pytest.mark.slow_ok  # the output cap, not the deadline: a stalled moment ran past 2 s in CI
async def test_one_gib_console_flood(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "flood", body(
        "const line = 'x'.repeat(1 << 20);\n"
        "for (let i = 0; i < 1024; i++) console.log(line);\nreturn 'flooded';"))
    outcome, _ = await meanwhile(dk, lambda: dk.call_tool(pid, "flood", {}))
    assert isinstance(outcome, LimitExceeded) and "output" in outcome.message
    assert sum(len(t) for t in logs(dk, pid)) <= LIMITS.max_output_bytes


@pytest.mark.slow_ok  # the syscall cap, not the deadline: on a loaded machine 300 can outlast 2 s
async def test_syscall_flood(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "flood", body(
        "await Promise.allSettled(Array.from({length: 5000}, () => libos.clock.now()));"))
    outcome, _ = await meanwhile(dk, lambda: dk.call_tool(pid, "flood", {}))
    assert isinstance(outcome, LimitExceeded)
    assert f"more than {LIMITS.max_syscalls} syscalls" in outcome.message, outcome
    intents = [r for r in dk.audit(pid) if r["syscall"] == "clock.now"
               and r["phase"] in OPENS]
    assert len(intents) == LIMITS.max_syscalls


async def test_reading_stdin_gets_nothing(dk: Kernel) -> None:
    pid = agent(dk)
    code = """
  const got: string[] = [];
  try { got.push(String(await (Deno as any).stdin.read(new Uint8Array(8)))); }
  catch (e: any) { got.push(e.name); }
  for (const p of ["/dev/stdin", "/proc/self/fd/0"]) {
    try { Deno.openSync(p); got.push("opened"); } catch (e: any) { got.push(e.name); }
  }
  return got;"""
    assert await tool(dk, pid, body(code)) == ["TypeError", "NotCapable", "NotCapable"]


# -- forged frames: a hostile runtime -----------------------------------------------------------

@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[tuple[Kernel, DenoSandbox]]:
    (tmp_path / "libos-fs" / "data").mkdir(parents=True)
    async with DenoSandbox(spares=1, runtime=HOSTILE, check_timeout=1.0,
                           memory_mb=LIMITS.memory_mb) as sandbox, \
            Kernel.open(tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k, sandbox


FORGERIES = {
    "forge_other_id": ProtocolError,
    "forge_result_other": ProtocolError,
    "forge_log_other": ProtocolError,
    "forge_garbage": ProtocolError,
    "forge_huge_length": ProtocolError,
    "forge_hello": ProtocolError,
    "forge_sysret": ProtocolError,
    "forge_kind": ProtocolError,
    "forge_finish_pending": ProtocolError,
    "forge_seq_replay": ProtocolError,
    "forge_stale_id": ProtocolError,
    "forge_truncated": SandboxCrashed,
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_frames_are_refused_and_attributed_to_no_one(
        hostile: tuple[Kernel, DenoSandbox], forgery: str) -> None:
    kernel, sandbox = hostile
    a, b = agent(kernel), agent(kernel)
    for pid in (a, b):
        for name in ("sys", "echo", forgery):
            await register(kernel, pid, name, ECHO)
    assert await kernel.call_tool(a, "echo", {"x": 1}) == {"x": 1}
    killed = sandbox.stats["killed"]
    results: list[Any] = []

    async def other() -> None:
        for _ in range(10):
            results.append(await kernel.call_tool(b, "sys", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        with pytest.raises(FORGERIES[forgery]):
            await kernel.call_tool(a, forgery, {})
    assert len(results) == 10 and all(isinstance(r, float) for r in results)
    await killed_since(sandbox, killed)
    # nothing forged ran: no fs.write anywhere, b's syscalls are b's own
    assert not [r for r in kernel.audit() if r["syscall"] == "fs.write"]
    assert {r["syscall"] for r in kernel.audit(b) if r["tool"] == "sys"} == {"clock.now"}
    # (the forger's own well-formed frames before the forgery are its own syscalls)
    assert {r["syscall"] for r in kernel.audit(a) if r["tool"] == forgery} <= {
        "clock.now", "clock.sleep"}
    assert "forged log" not in logs(kernel, a) + logs(kernel, b)
    # the forger's process gets a fresh sandbox
    assert await kernel.call_tool(a, "echo", {"y": 2}) == {"y": 2}


async def test_a_frame_written_while_idle_kills_the_sandbox_before_its_next_call(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, sandbox = hostile
    pid = agent(kernel)
    for name in ("echo", "forge_idle"):
        await register(kernel, pid, name, ECHO)
    assert await kernel.call_tool(pid, "forge_idle", {}) == "fine"
    await trio.sleep(0.2)  # it writes a log frame for its finished call
    killed = sandbox.stats["killed"]
    # the next call is not blamed: it runs on another sandbox
    assert await kernel.call_tool(pid, "echo", {"z": 3}) == {"z": 3}
    await killed_since(sandbox, killed)
    assert "after the call" not in logs(kernel, pid)


# -- one call cannot reach another's syscalls: the realm is hardened ---------------------------

# A tool that tries to plant a hook in every built-in the runtime (or a later tool) uses. Each
# hook would try whatever it is handed as a syscall function or a `libos`, writing a file in
# the name of whichever call is running. A second call of it (`{"report": true}`) says what its
# hooks saw and tries the `libos` it kept from its first call.
PLANT = """
const apply = Reflect.apply;
const seen: string[] = [];
let kept: any = null;
let busy = false;

function grab(where: string, v: any): void {
  if (busy) return;
  busy = true;
  try {
    seen[seen.length] = where;
    if (typeof v === "function") v("fs.write", {path: "/data/planted.txt", data: where});
    else if (v && typeof v.fs === "object") v.fs.write("/data/planted.txt", where);
  } catch { /* keep going */ } finally {
    busy = false;
  }
}

function hook(obj: any, key: PropertyKey, where: string): void {
  const orig = obj[key];
  obj[key] = function (this: unknown, ...a: unknown[]) {
    grab(where, this);
    for (let i = 0; i < a.length; i++) grab(where, a[i]);
    return apply(orig, this, a);
  };
}

function getter(obj: any, key: PropertyKey, where: string): void {
  Object.defineProperty(obj, key, {get() { grab(where, this); return undefined; },
                                   configurable: true});
}

const PLANTS: [string, (libos: any) => void][] = [
  ["WeakMap.prototype.set", () => hook(WeakMap.prototype, "set", "WeakMap.set")],
  ["WeakMap.prototype.get", () => hook(WeakMap.prototype, "get", "WeakMap.get")],
  ["Map.prototype.get", () => hook(Map.prototype, "get", "Map.get")],
  ["Map.prototype.set", () => hook(Map.prototype, "set", "Map.set")],
  ["Set.prototype.add", () => hook(Set.prototype, "add", "Set.add")],
  ["Promise.prototype.then", () => hook(Promise.prototype, "then", "then")],
  ["Promise[Symbol.species]", () => getter(Promise, Symbol.species, "species")],
  ["Array.prototype.push", () => hook(Array.prototype, "push", "push")],
  ["Array.prototype.map", () => hook(Array.prototype, "map", "map")],
  ["Array.prototype[Symbol.iterator]",
   () => hook(Array.prototype, Symbol.iterator, "iterator")],
  ["JSON.parse", () => hook(JSON, "parse", "JSON.parse")],
  ["JSON.stringify", () => hook(JSON, "stringify", "JSON.stringify")],
  ["Function.prototype.call", () => hook(Function.prototype, "call", "call")],
  ["Function.prototype.apply", () => hook(Function.prototype, "apply", "apply")],
  ["Function.prototype.bind", () => hook(Function.prototype, "bind", "bind")],
  ["Object.defineProperty", () => hook(Object, "defineProperty", "defineProperty")],
  ["Object.create", () => hook(Object, "create", "create")],
  ["Object.freeze", () => hook(Object, "freeze", "freeze")],
  ["Object.keys", () => hook(Object, "keys", "keys")],
  ["Reflect.apply", () => hook(Reflect, "apply", "Reflect.apply")],
  ["Object.prototype getter", () => getter(Object.prototype, "fs", "Object.prototype.fs")],
  ["TextEncoder.prototype.encode", () => hook(TextEncoder.prototype, "encode", "encode")],
  ["TextDecoder.prototype.decode", () => hook(TextDecoder.prototype, "decode", "decode")],
  ["Uint8Array.prototype.subarray", () => hook(Uint8Array.prototype, "subarray", "subarray")],
  ["DataView.prototype.setUint32", () => hook(DataView.prototype, "setUint32", "setUint32")],
  ["String.prototype.charCodeAt", () => hook(String.prototype, "charCodeAt", "charCodeAt")],
  ["Error.prepareStackTrace", () => {
    (Error as any).prepareStackTrace = (_e: unknown, frames: any[]) => {
      for (const f of frames) grab("stack", f.getFunction?.());
      return "";
    };
  }],
  ["console.log", () => hook(console, "log", "console.log")],
  ["Deno.inspect", () => hook(Deno, "inspect", "Deno.inspect")],
  ["globalThis.JSON", () => { (globalThis as any).JSON = {parse: JSON.parse}; }],
  ["globalThis.Promise", () => { (globalThis as any).Promise = Object; }],
  ["globalThis.setTimeout", () => hook(globalThis, "setTimeout", "setTimeout")],
  ["globalThis.TextEncoder", () => { (globalThis as any).TextEncoder = Object; }],
  ["a new global", () => getter(globalThis, "window", "window")],
  ["libos's prototype", (libos) => getter(Object.getPrototypeOf(libos), "fs", "libos proto")],
  ["libos.LibosError.prototype", (libos) => getter(libos.LibosError.prototype, "message",
                                                    "LibosError.message")],
  // The global's own event listeners (in a symbol-keyed slot): the runtime's record, its
  // list, the slot, and a listener of the tool's own, which would see later calls' events.
  ["the runtime's listener", () => {
    listeners().unhandledrejection[0].callback = grabReason;
  }],
  ["the listener list", () => { listeners().error.unshift({callback: grabError, options: {}}); }],
  ["the listener slot", () => { (globalThis as any)[slot()] = {listeners: {}}; }],
  ["a rejection listener", () => globalThis.addEventListener("unhandledrejection", grabReason)],
  ["an error listener", () => globalThis.addEventListener("error", grabError)],
];

function slot(): symbol {
  return Object.getOwnPropertySymbols(globalThis).find((s) => {
    const v = (globalThis as any)[s];
    return typeof v === "object" && v !== null && "listeners" in v;
  })!;
}

function listeners(): any {
  return (globalThis as any)[slot()].listeners;
}

function grabError(e: any): void {
  grab("error", e.error);
}

function grabReason(e: any): void {
  grab("rejection", e.reason);
}

export default async function run(args: any, libos: any) {
  if (args.report) {
    const stale: string[] = [];
    for (const f of [() => kept.fs.write("/data/planted.txt", "stale"),
                     () => kept.syscall("fs.write", {path: "/data/planted.txt", data: "x"})]) {
      try { await f(); stale.push("ok"); } catch (e: any) { stale.push(e.code); }
    }
    return {seen, stale, pid: performance.timeOrigin};
  }
  kept = libos;
  const planted: string[] = [], refused: string[] = [];
  for (const [name, plant] of PLANTS) {
    try { plant(libos); planted.push(name); } catch { refused.push(name); }
  }
  return {planted, refused, pid: performance.timeOrigin};
}
"""

# A read-only tool that hands its `libos` and syscall functions to every built-in planted above.
REPORT = """
export default async function run(args: any, libos: any) {
  const text = await libos.fs.read("/data/notes.txt");
  const m = new Map<string, unknown>([["read", libos.fs.read]]);
  m.set("libos", libos);
  const wm = new WeakMap<object, unknown>();
  wm.set(libos, libos.fs.read);
  new Set<unknown>().add(libos.syscall);
  const fns: unknown[] = [];
  fns.push(libos.fs.read, libos);
  const ns = [1, 2].map((x) => x * 2);
  for (const _ of fns) { /* iterate */ }
  const round = JSON.parse(JSON.stringify({text, ns, libos}));
  const back = new TextDecoder().decode(new TextEncoder().encode(text));
  const reads = await Promise.all([
    libos.fs.read.call(null, "/data/notes.txt"),
    libos.fs.read.apply(null, ["/data/notes.txt"]),
    libos.fs.read.bind(null)("/data/notes.txt"),
    Reflect.apply(libos.fs.read, null, ["/data/notes.txt"]),
  ].map((p: Promise<string>) => p.then((x) => x)));
  Object.keys(libos);
  Object.freeze(Object.create(libos));
  Object.defineProperty({}, "libos", {value: libos});
  class MyError extends Error {
    constructor(message: string) { super(message); this.name = "MyError"; }
  }
  Promise.reject(libos);  // unhandled, on purpose: the runtime's listener gets it
  console.log("report", libos);
  const own: any = {};
  own.toString = () => "own";
  return {text: round.text, ns: round.ns, back, same: reads.every((r) => r === text),
          err: String(new MyError("m")), own: String(own), pid: performance.timeOrigin};
}
"""


async def outcome(call: Awaitable[Any]) -> Any:
    """What a call returned, or the error it failed with."""
    try:
        return await call
    except LibosError as exc:
        return exc


async def test_a_hook_planted_in_a_builtin_never_reaches_a_later_call(dk: Kernel,
                                                                       tmp_path: Path) -> None:
    pid = agent(dk)
    await dk.call_tool(pid, "write_file", {"path": "/data/notes.txt", "data": "notes"})
    await register(dk, pid, "plant", PLANT)
    await register(dk, pid, "report", REPORT)
    planting = await dk.call_tool(pid, "plant", {})
    report = await outcome(dk.call_tool(pid, "report", {}))
    again = await outcome(dk.call_tool(pid, "plant", {"report": True}))
    # nothing was written, and the audit attributes each record to the tool that made it
    assert not (tmp_path / "libos-fs" / "data" / "planted.txt").exists()
    assert {r["tool"] for r in audit_of(dk, pid, "fs.write")} == {"write_file"}
    # every plant in a built-in was refused: the runtime froze them before any tool loaded
    assert planting["planted"] == [], planting
    assert len(planting["refused"]) == PLANT.count('\n  ["')
    # the later call of another tool, in the same sandbox process, is unaffected ...
    assert report == {"text": "notes", "ns": [2, 4], "back": "notes", "same": True,
                      "err": "MyError: m", "own": "own", "pid": planting["pid"]}
    # ... no hook saw anything, and the libos kept from the first call is revoked
    assert again == {"seen": [], "stale": ["CANCELLED", "CANCELLED"], "pid": planting["pid"]}
    inv = next(r["seq"] for r in audit_of(dk, pid, "tool.call")
               if r["phase"] in OPENS and r["resource"] == "report")
    mine = [r for r in dk.audit(pid) if r["inv"] == inv]
    assert {r["tool"] for r in mine} == {"report"}
    assert {r["syscall"] for r in mine} == {"fs.read"}


async def test_everything_a_tool_can_reach_from_the_global_scope_is_frozen(dk: Kernel) -> None:
    # Walks what a tool reaches without running anything (properties, accessors, prototypes),
    # and what a lazily loaded global returns once read: a built-in lockdown missed (a global
    # a newer Deno adds, say) fails here.
    code = """
  const open: string[] = [];
  const seen = new Set<unknown>([globalThis]);
  const stack: [unknown, string][] = [];
  const bindings: string[] = [];
  for (const key of Reflect.ownKeys(globalThis)) {
    if (typeof key === "symbol") continue;  // Deno's own slots
    const d = Object.getOwnPropertyDescriptor(globalThis, key)!;
    if (d.configurable || d.writable || d.set) bindings.push(key);
    let v: unknown;
    try { v = (globalThis as any)[key]; } catch { continue; }
    stack.push([v, key]);
  }
  const proto = Object.getPrototypeOf;
  for (const p of [proto(function* () {}), proto(async () => {}), proto(async function* () {}),
                   proto([].values()), proto(proto((async function* () {})()))]) {
    stack.push([p, "syntax"]);
  }
  while (stack.length) {
    const [v, path] = stack.pop()!;
    const isObject = (typeof v === "object" && v !== null) || typeof v === "function";
    if (!isObject || seen.has(v)) continue;
    seen.add(v);
    // (Error's stackTraceLimit stays writable: Pyodide sets it, V8 reads it)
    const frozen = v === Error ? !Object.isExtensible(v) && Reflect.ownKeys(v).every((k) =>
      k === "stackTraceLimit" || !Object.getOwnPropertyDescriptor(v, k)!.configurable &&
      !Object.getOwnPropertyDescriptor(v, k)!.writable) : Object.isFrozen(v);
    if (!frozen) open.push(path);
    stack.push([Object.getPrototypeOf(v), `${path}.__proto__`]);
    let descs: Record<string, PropertyDescriptor> = {};
    try { descs = Object.getOwnPropertyDescriptors(v); } catch { continue; }
    for (const k of Reflect.ownKeys(descs)) {
      const d = descs[k as string];
      for (const x of [d.value, d.get, d.set]) stack.push([x, `${path}.${String(k)}`]);
    }
  }
  return {open: open.slice(0, 20), bindings, extensible: Object.isExtensible(globalThis),
          walked: seen.size};"""
    got = await tool(dk, agent(dk), body(code))
    assert got["open"] == [] and got["bindings"] == [] and got["extensible"] is False, got
    assert got["walked"] > 1000


async def test_web_storage_is_no_channel_between_processes(dk: Kernel) -> None:
    # Deno keeps localStorage and the Cache API in its directory, which every sandbox of a
    # driver shares and which needs no permission: they are not there for a tool.
    code = """
  const out: Record<string, unknown> = {};
  const g = globalThis as any;
  for (const name of ["localStorage", "sessionStorage", "caches"]) out[name] = typeof g[name];
  try {
    out.stored = g.localStorage.getItem("libos-mark");
    g.localStorage.setItem("libos-mark", args.me);
  } catch (e: any) { out.storage = e.name; }
  try {
    const cache = await g.caches.open("libos");
    const hit = await cache.match("http://libos/mark");
    out.cached = hit ? await hit.text() : null;
    await cache.put("http://libos/mark", new Response(args.me));
  } catch (e: any) { out.cache = e.name; }
  return out;"""
    a, b = agent(dk), agent(dk)
    await tool(dk, a, body(code), {"me": "a"})
    got = await tool(dk, b, body(code), {"me": "b"})
    assert got == {"localStorage": "undefined", "sessionStorage": "undefined",
                   "caches": "undefined", "storage": "TypeError", "cache": "TypeError"}
    assert await dk.call_tool(b, "t", {"me": "b"}) == got  # the tool still runs


# A tool that imports the runtime's own modules (Deno asks no permission for a module it has
# already loaded, and a stack trace names their directory) and tries to rewrite the next call's
# frames: the `call` of another tool becomes a call of this one, run with that call's libos.
# A sandbox runs them bundled (main.bundle.js): the modules are then not loaded, so importing
# one needs a read permission the sandbox lacks, and the bundle itself exports nothing.
HIJACK = r"""
const RUNTIME = ["errors.ts", "hide.ts", "libos.ts", "lockdown.ts", "messages.ts", "modules.ts",
                 "msgpack.ts", "syscalls.gen.ts", "main.ts", "main.bundle.js"];

function openExports(ns: Record<string, unknown>, name: string): string[] {
  const open: string[] = [];
  const seen = new Set<unknown>();
  const stack: [unknown, string][] = Object.keys(ns).map((k) => [ns[k], `${name}.${k}`]);
  while (stack.length) {
    const [v, path] = stack.pop()!;
    const isObject = (typeof v === "object" && v !== null) || typeof v === "function";
    if (!isObject || seen.has(v)) continue;
    seen.add(v);
    const namespace = (v as any)[Symbol.toStringTag] === "Module";  // exports are read-only
    if (!Object.isFrozen(v) && v !== Error && !namespace) open.push(path);
    stack.push([Object.getPrototypeOf(v), `${path}.__proto__`]);
    const descs = Object.getOwnPropertyDescriptors(v);
    for (const k of Reflect.ownKeys(descs)) {
      const d = descs[k as string];
      for (const x of [d.value, d.get, d.set]) stack.push([x, `${path}.${String(k)}`]);
    }
  }
  return open;
}

export default async function run(args: any, libos: any) {
  if (args.hijacked) {  // only ever reached through a rewritten frame
    await libos.fs.write("/data/planted.txt", "planted");
    return "hijacked";
  }
  // Stack frames no longer name the runtime's host path: the test hands it in, as an
  // attacker who guessed where the package is installed would have it.
  const dir = args.dir;
  const imported: string[] = [], open: string[] = [], exported: string[] = [];
  const unreadable: string[] = [], planted: string[] = [], refused: string[] = [];
  const mods: Record<string, any> = {};
  for (const name of RUNTIME) {
    try {
      mods[name] = await import(dir + name);
    } catch (e: any) {
      unreadable.push(/Requires read access/.test(e.message) ? name : `${name}: ${e.message}`);
      continue;
    }
    imported.push(name);
    exported.push(...Object.keys(mods[name]).map((k) => `${name}.${k}`));
    open.push(...openExports(mods[name], name));
  }
  const next = mods["msgpack.ts"]?.FrameDecoder.prototype.next;  // each plant refused if absent
  const plants: [string, () => void][] = [
    ["FrameDecoder.next", () => {
      mods["msgpack.ts"].FrameDecoder.prototype.next = function (this: unknown, ...a: unknown[]) {
        const d = next.apply(this, a);
        if (d?.value?.t === "call" && d.value.tool === "report") {
          d.value.tool = args.me;
          d.value.args = {hijacked: true};
        }
        return d;
      };
    }],
    ["ProtocolFault.prototype", () => { mods["msgpack.ts"].ProtocolFault.prototype.x = 1; }],
    ["SANDBOX_KINDS", () => { mods["messages.ts"].SANDBOX_KINDS.push("evil"); }],
    ["SYSCALLS", () => { mods["syscalls.gen.ts"].SYSCALLS[0].name = "evil"; }],
    ["makeLibos", () => { mods["libos.ts"].makeLibos.x = 1; }],
    ["harden", () => { mods["lockdown.ts"].harden.x = 1; }],
  ];
  for (const [name, plant] of plants) {
    try { plant(); planted.push(name); } catch { refused.push(name); }
  }
  let unloaded: string;
  try {
    await import(dir + "pyodide/host.ts");
    unloaded = "imported";
  } catch (e: any) { unloaded = e.message; }
  return {imported, unreadable, exported, open, planted, refused, unloaded,
          pid: performance.timeOrigin};
}
"""

HIJACKED_REPORT = """export default async function run(args: any, libos: any) {
  return {text: await libos.fs.read("/data/notes.txt"), pid: performance.timeOrigin};
}"""


@pytest.fixture(params=["bundled", "modules"])
async def runtime_dk(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[tuple[Kernel, str]]:
    """A kernel over the shipped runtime (one bundled file) or over its modules (main.ts, as
    the Pyodide host loads them): neither may leave a tool anything to plant in."""
    runtime = MAIN if request.param == "bundled" else MAIN_SOURCE
    async with DenoSandbox(spares=1, runtime=runtime, memory_mb=LIMITS.memory_mb,
                           check_timeout=1.0) as sandbox, \
            kernel_over(tmp_path, sandbox) as k:
        yield k, request.param


async def test_the_runtimes_own_modules_are_frozen_too(runtime_dk: tuple[Kernel, str],
                                                        tmp_path: Path) -> None:
    dk, runtime = runtime_dk
    pid = agent(dk)
    await dk.call_tool(pid, "write_file", {"path": "/data/notes.txt", "data": "notes"})
    await register(dk, pid, "hijack", HIJACK)
    await register(dk, pid, "report", HIJACKED_REPORT)
    planting = await dk.call_tool(pid, "hijack", {"me": "hijack",
                                                  "dir": RUNTIME_DIR.as_uri() + "/"})
    report = await outcome(dk.call_tool(pid, "report", {}))
    # every runtime module the sandbox loaded is importable, and everything it exports is
    # frozen: no plant took (a module it never loaded needs a read permission it lacks)
    if runtime == "bundled":
        assert planting["imported"] == ["main.bundle.js"] and planting["exported"] == []
        assert len(planting["unreadable"]) == 9
    else:
        assert len(planting["imported"]) == 9 and planting["unreadable"] == ["main.bundle.js"]
    assert planting["open"] == [] and planting["planted"] == [], planting
    assert len(planting["refused"]) == 6
    assert "Requires read access" in planting["unloaded"]
    # the later call of another tool, in the same sandbox process, ran as itself ...
    assert report == {"text": "notes", "pid": planting["pid"]}
    assert not (tmp_path / "libos-fs" / "data" / "planted.txt").exists()
    # ... and the audit attributes each record to the tool that made it
    assert {r["tool"] for r in audit_of(dk, pid, "fs.write")} == {"write_file"}
    inv = next(r["seq"] for r in audit_of(dk, pid, "tool.call")
               if r["phase"] in OPENS and r["resource"] == "report")
    mine = [r for r in dk.audit(pid) if r["inv"] == inv]
    assert {(r["tool"], r["syscall"], r["phase"]) for r in mine} == {
        ("report", "fs.read", "intent+outcome")}


async def refused_beside_a_neighbour(kernel: Kernel, pid: int, name: str,
                                     raises: type[Exception], match: str) -> None:
    """Call `pid`'s hostile tool `name` (it must fail with `raises`, matching `match`) while
    another process calls its tool `sys` (the hostile runtime's clock) ten times: each of
    those is answered, and the hostile call's recorded end is that error."""
    other = agent(kernel)
    await register(kernel, other, "sys", ECHO)
    times: list[object] = []

    async def neighbour() -> None:
        for _ in range(10):
            times.append(await kernel.call_tool(other, "sys", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(neighbour)
        with pytest.raises(raises, match=match) as caught:
            await kernel.call_tool(pid, name, {})
    assert len(times) == 10 and all(isinstance(t, float) for t in times)
    ends = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
            and r["resource"] == name and "ok" in r["detail"]]
    assert [(r["detail"]["ok"], r["detail"].get("error")) for r in ends] == [
        (False, caught.value.code)]  # type: ignore[attr-defined]
