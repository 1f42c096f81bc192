"""TypeScript tools through the broker: a real kernel over SQLite, real zero-permission Deno.

Registration (checked in a Worker, stored content-addressed), calls, argument validation
before the sandbox, syscalls and their audit, typed errors both ways, console output as log
events, tools calling tools, manifests, the warm pool keyed by authority, dead sandboxes
replaced, limits (deadline, syscall count, output), cancellation.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytest
import trio

from broker import (
    AgentImage,
    CallLimits,
    Conflict,
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
    NotFound,
    SandboxCrashed,
    ToolFailed,
)
from broker.store.audit import CLOSES, OPENS
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import (
    DEADLINE_SLACK,
    LIMITS,
    NEEDS,
    Served,
    agent,
    audit_of,
    logs,
    register_tool,
    run_tool,
)

# -- helpers (also used by test_deno_attacks.py) -------------------------------------------

register = partial(register_tool, lang="ts")
tool = partial(run_tool, lang="ts")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone once reaped
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


ECHO = "export default async function run(args: unknown) { return args; }"
# Which sandbox process ran a call, as far as a tool can tell (its start time: tool code never
# learns a host pid; the host's view is the `served` fixture).
SANDBOX_ID = "export default async function run() { return performance.timeOrigin; }"


# -- registration ---------------------------------------------------------------------------

async def test_register_stores_the_source_content_addressed(dk: Kernel) -> None:
    pid = agent(dk)
    out = await register(dk, pid, "echo", ECHO, description="echo its arguments")
    assert out == {"name": "echo", "lang": "ts",
                   "hash": hashlib.sha256(ECHO.encode()).hexdigest()}
    assert dk.store.get_tool_source(out["hash"])[1] == ECHO.encode()
    outcome = [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"]
    assert outcome[-1]["detail"]["ok"] is True
    assert outcome[-1]["detail"]["result"]["hash"] == out["hash"]
    tools = {t["name"]: t for t in dk.list_tools(pid)}
    assert tools["echo"]["lang"] == "ts"
    assert tools["echo"]["description"] == "echo its arguments"


async def test_a_named_run_export_is_a_tool_too(dk: Kernel) -> None:
    pid = agent(dk)
    source = "export async function run(args: {n: number}) { return args.n * 2; }"
    assert await tool(dk, pid, source, {"n": 21}) == 42


@pytest.mark.parametrize(("source", "message"), [
    ("export default async function run( { return 1 }", "SyntaxError"),
    ("export const x: = 1;", "SyntaxError"),
    ("export const x = 1;", "must export a run function"),
    ("export default 42;", "must export a run function"),
    ("throw new Error('no');\nexport default async function run() {}", "no"),
    ("export default async function run() {}\nwhile (true) {}", "did not finish loading"),
])
async def test_registration_refuses_what_is_not_a_tool(dk: Kernel, source: str,
                                                       message: str) -> None:
    pid = agent(dk)
    with pytest.raises(InvalidArgument, match=message):
        await register(dk, pid, "bad", source)
    assert "bad" not in {t["name"] for t in dk.list_tools(pid)}
    rejected = [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"]
    assert rejected[-1]["detail"]["ok"] is False
    # the checker survives a bad tool
    await register(dk, pid, "good", ECHO)


async def test_registration_needs_the_capability(dk: Kernel) -> None:
    pid = agent(dk, ["fs:/data/**:read"])
    with pytest.raises(NotCapable):
        await register(dk, pid, "echo", ECHO)
    denied = audit_of(dk, pid, "tool.register")
    assert denied and denied[-1]["phase"] == "denied"
    assert "echo" not in {t["name"] for t in dk.list_tools(pid)}


async def test_typescript_types_are_stripped(dk: Kernel) -> None:
    pid = agent(dk)
    source = """
interface Args { words: string[] }
type Count = { [w: string]: number };
enum Mode { Fast = "fast" }
export default async function run(args: Args, libos: unknown): Promise<Count> {
  const out: Count = {};
  for (const w of args.words as readonly string[]) out[w] = (out[w] ?? 0) + 1;
  out[Mode.Fast] = 0;
  return out satisfies Count;
}"""
    got = await tool(dk, pid, source, {"words": ["a", "b", "a"]})
    assert got == {"a": 2, "b": 1, "fast": 0}


# -- calls ----------------------------------------------------------------------------------

async def test_returning_nothing_is_null(dk: Kernel) -> None:
    pid = agent(dk)
    assert await tool(dk, pid, "export default async function run() {}") is None
    assert await tool(dk, pid, "export default function run() { return undefined; }",
                      name="u") is None


async def test_values_round_trip(dk: Kernel) -> None:
    pid = agent(dk)
    args = {"s": "Zoë 🧪", "i": -7, "big": 2**53 - 1, "f": 0.5, "b": True, "n": None,
            "l": [1, [2, {"x": []}]], "__proto__": {"admin": True}}
    assert await tool(dk, pid, ECHO, args) == args


async def test_arguments_are_validated_before_the_sandbox(dk: Kernel,
                                                          deno: DenoSandbox) -> None:
    pid = agent(dk)
    source = """export default async function run(args: {n: number}) {
  console.log("ran with", args.n);
  return args.n;
}"""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    await register(dk, pid, "t", source, schema=schema)
    assert await dk.call_tool(pid, "t", {"n": 1}) == 1
    calls = deno.stats["warm_acquires"] + deno.stats["spare_acquires"]
    for bad in ({}, {"n": "one"}, {"n": 1, "extra": 2}):
        with pytest.raises(InvalidArgument):
            await dk.call_tool(pid, "t", bad)
    assert deno.stats["warm_acquires"] + deno.stats["spare_acquires"] == calls
    assert logs(dk, pid) == ["ran with 1"]


async def test_syscalls_round_trip_and_are_audited(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: unknown, libos: any) {
  await libos.fs.mkdir("/data/notes", true);
  const n = await libos.fs.write("/data/notes/a.txt", "hello");
  const text = await libos.fs.read("/data/notes/a.txt");
  const listing = await libos.fs.list("/data/notes");
  await libos.obj.put("n1", "json", {text});
  const obj = await libos.obj.get("n1");
  const now = await libos.clock.now();
  const me = await libos.proc.self();
  const raw = await libos.syscall("fs.stat", {path: "/data/notes/a.txt"});
  return {n, text, names: listing.map((e: any) => e.name), obj, now, pid: me.pid,
          size: raw.size};
}"""
    got = await tool(dk, pid, source)
    assert got["text"] == "hello" and got["names"] == ["a.txt"] and got["size"] == 5
    assert got["obj"]["value"] == {"text": "hello"}
    assert got["pid"] == pid and got["now"] > 1e9
    done = [r for r in dk.audit(pid) if r["tool"] == "t" and r["phase"] in CLOSES]
    assert [r["syscall"] for r in done] == ["fs.mkdir", "fs.write", "fs.read", "fs.list",
                                            "obj.put", "obj.get", "clock.now", "proc.self",
                                            "fs.stat"]
    assert len({r["inv"] for r in done}) == 1 and done[0]["inv"] is not None


async def test_blocking_and_fast_syscalls_in_parallel(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: unknown, libos: any) {
  const t0 = Date.now();
  const got = await Promise.all([libos.clock.sleep(0.2), libos.clock.now(),
                                 libos.clock.sleep(0.2), libos.proc.self()]);
  return {ms: Date.now() - t0, pid: got[3].pid};
}"""
    got = await tool(dk, pid, source)
    assert got["pid"] == pid
    assert 150 <= got["ms"] < 1500  # the two sleeps overlapped


async def test_unawaited_syscalls_are_answered_before_the_result(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: unknown, libos: any) {
  libos.fs.write("/data/late.txt", "x");
  libos.clock.sleep(0.05);
  return "early";
}"""
    assert await tool(dk, pid, source) == "early"
    assert await dk.call_tool(pid, "read_file", {"path": "/data/late.txt"}) == "x"


# -- errors, both ways -----------------------------------------------------------------------

async def test_syscall_errors_arrive_as_typed_error_subclasses(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: unknown, libos: any) {
  const seen: unknown[] = [];
  for (const f of [() => libos.fs.read("/etc/passwd"), () => libos.fs.read("/data/none"),
                   () => libos.fs.read(""), () => libos.syscall("no.such", {})]) {
    try { await f(); seen.push("no error"); }
    catch (e: any) {
      seen.push([e.name, e.code, e instanceof libos.LibosError, e instanceof Error,
                 e instanceof libos.errors[e.code]]);
    }
  }
  return seen;
}"""
    got = await tool(dk, pid, source)
    assert got == [["NotCapable", "NOT_CAPABLE", True, True, True],
                   ["NotFound", "NOT_FOUND", True, True, True],
                   ["InvalidArgument", "INVALID_ARGUMENT", True, True, True],
                   ["NotCapable", "NOT_CAPABLE", True, True, True]]
    denied = [r for r in dk.audit(pid) if r["phase"] == "denied" and r["tool"] == "t"]
    assert {r["syscall"] for r in denied} == {"fs.read", "unknown"}  # tools name no records
    assert [r["detail"]["name"] for r in denied if r["syscall"] == "unknown"] == ["no.such"]


@pytest.mark.parametrize(("throw", "error", "message"), [
    ("throw new libos.Conflict('version 3 is newer')", Conflict, "version 3 is newer"),
    ("throw new libos.errors.NOT_FOUND('gone')", NotFound, "gone"),
    ("await libos.fs.read('/etc/shadow')", NotCapable, "/etc/shadow"),
    # The tool's own failure: a code of its own, never a bad argument's.
    ("throw new TypeError('bad input')", ToolFailed, "TypeError: bad input"),
    ("throw 'a string'", ToolFailed, "a string"),
    ("return () => 1", ToolFailed, "cannot be sent"),
    ("const f = (n: number): number => f(n + 1); f(0)", LimitExceeded, "call stack"),
    ("Deno.readTextFileSync('/etc/passwd')", NotCapable, "read access"),
])
async def test_tool_errors_arrive_typed(dk: Kernel, throw: str, error: type,
                                        message: str) -> None:
    pid = agent(dk)
    source = f"export default async function run(args: unknown, libos: any) {{ {throw}; }}"
    with pytest.raises(error, match=message):
        await tool(dk, pid, source)
    # the sandbox survives a tool's error: the next call works
    assert await tool(dk, pid, ECHO, {"a": 1}, name="echo") == {"a": 1}


async def test_net_and_shell_without_a_capability_are_not_capable(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: unknown, libos: any) {
  const out: string[] = [];
  for (const f of [() => libos.net.fetch("https://example.com"),
                   () => libos.shell.run(["id"])]) {
    try { await f(); out.push("ran"); } catch (e: any) { out.push(e.code); }
  }
  return out;
}"""
    assert await tool(dk, pid, source) == ["NOT_CAPABLE", "NOT_CAPABLE"]
    denied = {r["syscall"] for r in dk.audit(pid) if r["phase"] == "denied"}
    assert {"net.fetch", "shell.run"} <= denied


# -- console ---------------------------------------------------------------------------------

async def test_console_becomes_log_events(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run() {
  console.log("hello", {a: [1, 2]}, 3);
  console.error("bad");
  console.warn("careful");
  console.debug("detail");
  return "done";
}"""
    assert await tool(dk, pid, source) == "done"
    events = [e["data"] for e in dk.store.events(pid=pid) if e["kind"] == "log"]
    assert [(e["level"], e["text"]) for e in events] == [
        ("info", "hello { a: [ 1, 2 ] } 3"), ("error", "bad"), ("warn", "careful"),
        ("debug", "detail")]
    assert {e["tool"] for e in events} == {"t"}


async def test_timers_do_not_outlive_their_call(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: {n: number}) {
  setInterval(() => console.log("tick from call", args.n), 5);
  setTimeout(() => console.log("late from call", args.n), 50);
  await new Promise((r) => setTimeout(r, 30));
  return args.n;
}"""
    await register(dk, pid, "t", source)
    assert await dk.call_tool(pid, "t", {"n": 1}) == 1
    await trio.sleep(0.1)
    assert await dk.call_tool(pid, "t", {"n": 2}) == 2
    texts = logs(dk, pid)
    assert any(t == "tick from call 1" for t in texts)
    assert not any("late" in t for t in texts)
    # call 2 never hears from call 1's timers
    second = [e["data"] for e in dk.store.events(pid=pid) if e["kind"] == "log"]
    invs = {e["inv"] for e in second}
    assert len(invs) == 2
    last = max(invs)
    assert all(e["text"].endswith("2") for e in second if e["inv"] == last)


# -- tools calling tools, manifests ------------------------------------------------------------

async def test_a_tool_calls_tools(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "double", "export default async function run(a: {n: number}) "
                                      "{ return a.n * 2; }")
    source = """export default async function run(args: {n: number}, libos: any) {
  const d = await libos.tool.call("double", {n: args.n});
  await libos.tool.call("write_file", {path: "/data/d.txt", data: String(d)});
  const back = await libos.tool.call("read_file", {path: "/data/d.txt"});
  let err = null;
  try { await libos.tool.call("nope", {}); } catch (e: any) { err = e.code; }
  return {d, back, err};
}"""
    assert await tool(dk, pid, source, {"n": 21}, name="outer") == {
        "d": 42, "back": "42", "err": "NOT_FOUND"}
    calls = [r for r in audit_of(dk, pid, "tool.call") if r["phase"] in OPENS]
    assert [r["resource"] for r in calls][-4:] == ["double", "write_file", "read_file", "nope"]


async def test_a_manifest_narrows_a_tool(dk: Kernel) -> None:
    pid = agent(dk)
    await dk.call_tool(pid, "make_dir", {"path": "/data/pub"})
    await dk.call_tool(pid, "write_file", {"path": "/data/pub/a", "data": "public"})
    await dk.call_tool(pid, "write_file", {"path": "/data/secret", "data": "secret"})
    source = """export default async function run(args: {path: string}, libos: any) {
  return await libos.fs.read(args.path);
}"""
    await register(dk, pid, "reader", source, manifest=["fs:/data/pub/**:read"])
    assert await dk.call_tool(pid, "reader", {"path": "/data/pub/a"}) == "public"
    with pytest.raises(NotCapable):
        await dk.call_tool(pid, "reader", {"path": "/data/secret"})
    denied = [r for r in audit_of(dk, pid, "fs.read") if r["phase"] == "denied"]
    assert denied[-1]["tool"] == "reader" and denied[-1]["resource"] == "/data/secret"
    # the same tool without a manifest reads both; the process's authority is unchanged
    await register(dk, pid, "wide", source)
    assert await dk.call_tool(pid, "wide", {"path": "/data/secret"}) == "secret"


async def test_a_manifest_cannot_widen(dk: Kernel) -> None:
    pid = agent(dk)
    with pytest.raises(NotCapable):
        await register(dk, pid, "greedy", ECHO, manifest=["fs:/**:read,write"])


async def test_a_typescript_call_replays_from_its_audit(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(args: {path: string}, libos: any) {
  await libos.fs.write(args.path, "v1");
  const text = await libos.fs.read(args.path);
  console.log("read", text);
  return {text, now: await libos.clock.now()};
}"""
    first = await tool(dk, pid, source, {"path": "/data/r.txt"})
    await dk.call_tool(pid, "write_file", {"path": "/data/r.txt", "data": "changed"})
    inv = [r for r in audit_of(dk, pid, "tool.call")
           if r["phase"] in OPENS and r["resource"] == "t"][-1]["seq"]
    replay = await dk.replay(inv)
    assert replay["same"] is True, replay
    assert replay["replayed"]["value"] == first  # the recorded world, not today's file
    assert await dk.call_tool(pid, "read_file", {"path": "/data/r.txt"}) == "changed"


# -- the pool ------------------------------------------------------------------------------

async def test_tools_of_two_processes_never_share_a_sandbox(dk: Kernel) -> None:
    a, b = agent(dk), agent(dk)
    for pid in (a, b):
        await register(dk, pid, "whoami_ts", SANDBOX_ID)
        await register(dk, pid, "narrow", SANDBOX_ID, manifest=["fs:/data/x/**:read"])
    seen_a = {await dk.call_tool(a, "whoami_ts", {}) for _ in range(5)}
    seen_b = {await dk.call_tool(b, "whoami_ts", {}) for _ in range(5)}
    assert len(seen_a) == 1 and len(seen_b) == 1  # warm: the same sandbox every time
    assert seen_a != seen_b
    # another manifest is another authority, even in the same process
    narrow_a = await dk.call_tool(a, "narrow", {})
    assert narrow_a not in seen_a | seen_b


async def test_a_nested_call_is_keyed_by_its_callers_manifests_too(dk: Kernel) -> None:
    # The same tool called at top level and through a caller whose manifest narrows it runs
    # under two authorities: never in the same sandbox process.
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    await register(dk, pid, "via", """export default async function run(args: {name: string},
        libos: any) { return await libos.tool.call(args.name, {}); }""",
        manifest=["fs:/data/x/**:read", "tool:*:call"])
    top = {await dk.call_tool(pid, "whoami_ts", {}) for _ in range(3)}
    nested = {await dk.call_tool(pid, "via", {"name": "whoami_ts"}) for _ in range(3)}
    assert len(top) == 1  # warm: the same sandbox every time
    assert not top & nested
    calls = [r for r in audit_of(dk, pid, "tool.call") if r["phase"] in CLOSES]
    assert [r["tool"] for r in calls if r["resource"] == "whoami_ts"][-3:] == ["via"] * 3


async def test_warm_calls_start_no_process(dk: Kernel, deno: DenoSandbox) -> None:
    pid = agent(dk)
    await register(dk, pid, "echo", ECHO)
    await dk.call_tool(pid, "echo", {})
    await deno.warm()
    started = deno.stats["started"]
    for i in range(20):
        assert await dk.call_tool(pid, "echo", {"i": i}) == {"i": i}
    assert deno.stats["started"] == started


async def test_a_new_authority_takes_a_ready_spare(dk: Kernel, deno: DenoSandbox) -> None:
    # Its registration is checked in the spare, which keeps the tool for the first call.
    await deno.warm()
    pid = agent(dk)
    before = dict(deno.stats)
    t0 = trio.current_time()
    await register(dk, pid, "echo", ECHO)
    assert deno.stats["spare_acquires"] == before["spare_acquires"] + 1
    await dk.call_tool(pid, "echo", {})
    assert deno.stats["warm_acquires"] == before["warm_acquires"] + 1
    assert deno.stats["cold_acquires"] == before["cold_acquires"]
    assert deno.stats["started"] <= before["started"] + 1  # the spare's replacement, no more
    assert trio.current_time() - t0 < 1.0


async def test_concurrent_calls_of_one_process_run_side_by_side(dk: Kernel) -> None:
    pid = agent(dk)
    await register(dk, pid, "nap", """export default async function run(a: unknown,
        libos: any) { await libos.clock.sleep(0.4); return performance.timeOrigin; }""")
    await dk.call_tool(pid, "nap", {})
    pids: list[int] = []

    async def one() -> None:
        pids.append(await dk.call_tool(pid, "nap", {}))

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    assert trio.current_time() - t0 < 1.4  # not 4 x 0.4 s one after another
    assert len(set(pids)) == 4  # a sandbox holds one call at a time


async def test_a_dead_sandbox_fails_only_its_call_and_is_replaced(dk: Kernel,
                                                                   served: Served) -> None:
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    await register(dk, pid, "sleeper", """export default async function run(a: unknown,
        libos: any) { await libos.clock.sleep(5); return "woke"; }""")
    await dk.call_tool(pid, "whoami_ts", {})
    first = served.last("whoami_ts")

    async def kill_it() -> None:
        await trio.sleep(0.3)
        os.kill(first, 9)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_it)
        with pytest.raises(SandboxCrashed):
            await dk.call_tool(pid, "sleeper", {})
    await dk.call_tool(pid, "whoami_ts", {})
    assert served.last("whoami_ts") != first and not alive(first)


# -- limits and cancellation ------------------------------------------------------------------

async def test_deadline_kills_the_sandbox(dk: Kernel, served: Served) -> None:
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    await dk.call_tool(pid, "whoami_ts", {})
    sandbox_pid = served.last("whoami_ts")
    t0 = trio.current_time()
    with pytest.raises(LimitExceeded, match="deadline"):
        await tool(dk, pid, "export default async function run() { while (true) {} }")
    assert trio.current_time() - t0 < LIMITS.deadline + DEADLINE_SLACK
    assert not alive(sandbox_pid)
    await dk.call_tool(pid, "whoami_ts", {})
    assert served.last("whoami_ts") != sandbox_pid


async def test_a_blocking_syscall_is_bounded_by_the_deadline(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(a: unknown, libos: any) {
  await libos.clock.sleep(60); return "woke"; }"""
    t0 = trio.current_time()
    with pytest.raises(LimitExceeded):
        await tool(dk, pid, source)
    assert trio.current_time() - t0 < LIMITS.deadline + DEADLINE_SLACK


async def test_syscall_count_cap(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run(a: unknown, libos: any) {
  for (let i = 0; i < 100000; i++) {
    try { await libos.clock.now(); } catch (e) { /* keep going */ }
  }
  return "never";
}"""
    with pytest.raises(LimitExceeded, match="syscalls"):
        await tool(dk, pid, source)
    now = audit_of(dk, pid, "clock.now")
    assert sum(r["phase"] in OPENS for r in now) == LIMITS.max_syscalls
    refused = [r for r in now if r["phase"] == "rejected"]
    assert refused and refused[0]["detail"]["error"] == "LIMIT_EXCEEDED"


async def test_too_many_syscalls_in_flight_are_refused_in_the_sandbox(
        tmp_path: Path, deno: DenoSandbox) -> None:
    limits = CallLimits(deadline=10.0, max_syscalls=5000, memory_mb=LIMITS.memory_mb)
    async with Kernel.open(tmp_path / "k.db", sandboxes=[deno], call_limits=limits) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = agent(k)
        source = """export default async function run(a: unknown, libos: any) {
  const got = await Promise.allSettled(Array.from({length: 1100},
                                                  () => libos.clock.sleep(0.01)));
  return got.filter((r: any) => r.status === "rejected").map((r: any) => r.reason.code);
}"""
        refused = await tool(k, pid, source)
    assert refused == ["LIMIT_EXCEEDED"] * 100


async def test_output_cap(dk: Kernel) -> None:
    pid = agent(dk)
    source = """export default async function run() {
  for (let i = 0; i < 1000; i++) console.log("x".repeat(1000));
  return "never";
}"""
    with pytest.raises(LimitExceeded, match="output"):
        await tool(dk, pid, source)
    assert sum(len(t) for t in logs(dk, pid)) <= LIMITS.max_output_bytes


async def test_a_big_result_counts_as_output(dk: Kernel) -> None:
    pid = agent(dk)
    source = "export default async function run() { return 'y'.repeat(200000); }"
    with pytest.raises(LimitExceeded, match="output"):
        await tool(dk, pid, source)


async def test_cancelling_a_call_kills_its_sandbox(dk: Kernel, served: Served) -> None:
    pid = agent(dk)
    await register(dk, pid, "whoami_ts", SANDBOX_ID)
    await dk.call_tool(pid, "whoami_ts", {})
    sandbox_pid = served.last("whoami_ts")
    await register(dk, pid, "spin", "export default async function run() { while (true) {} }")
    with trio.move_on_after(0.3) as scope:
        await dk.call_tool(pid, "spin", {})
    assert scope.cancelled_caught
    assert not alive(sandbox_pid)
    await dk.call_tool(pid, "whoami_ts", {})
    assert served.last("whoami_ts") != sandbox_pid


async def test_an_unentered_sandbox_starts_with_the_kernel(tmp_path: Path,
                                                           served: Served) -> None:
    deno = DenoSandbox(spares=0)
    async with Kernel.open(tmp_path / "k.db", sandboxes=[deno]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = agent(k)
        assert await tool(k, pid, ECHO, {"x": 1}) == {"x": 1}
        await tool(k, pid, SANDBOX_ID, name="p")
    assert not alive(served.last("p"))  # closed with the kernel


async def test_without_refill_a_spare_taken_is_not_replaced(tmp_path: Path) -> None:
    """`refill=False` (what `libos demo` opens): the spares are started once and a spare
    handed out is not replaced; `warm()` does not wait for one that will never come; a new
    authority then starts its sandbox inside its call."""
    async with DenoSandbox(spares=1, refill=False) as deno, Kernel.open(
            tmp_path / "k.db", sandboxes=[deno]) as k:
        await deno.warm()
        assert deno.stats["started"] == 1
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        first = agent(k)
        assert await tool(k, first, ECHO, {"x": 1}) == {"x": 1}
        assert deno.stats["spare_acquires"] == 1
        with trio.fail_after(5):
            await deno.warm()
        await trio.sleep(0.3)  # a refill would have started one by now
        assert deno.stats["started"] == 1 and not deno.pool.ready
        second = agent(k)
        assert await tool(k, second, ECHO, {"y": 2}) == {"y": 2}
        assert deno.stats["cold_acquires"] == 1 and deno.stats["started"] == 2
