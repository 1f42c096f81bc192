"""Who runs in the soak (`bench.soak_bench`): well-behaved workers and one hostile process.

A worker is a scripted agent that paces itself like one waiting for a model (`think` seconds
between steps) and does checkable work each round: appends a numbered line to its file,
writes a versioned object, messages the next worker and takes its own mail, reads the time
and a shared file, every tenth calls a TypeScript tool of its own (a real Deno sandbox),
every tenth (others) asks a person before a write, and looks for the `stop` event. Seeing
it, it sends an end marker and takes mail until its predecessor's end marker has come. Its
state is a function of its history alone, so a planner rebuilt after a crash carries on.

The hostile process does everything issue 20 names at once: its model (a loopback server)
replies with 200 KB of text, 5,000 calls, arguments nested 5,000 deep or over the size limit,
and reads of an 8 MiB file; beside it the host keeps calling its TypeScript floods (empty log
lines, refused syscalls, fan-outs of shell runs, fetches, approval requests and tool calls,
raised events, children spawned up to the bound and then killed and spawned again, a heap
bomb) over and over.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from broker import CallTool, Exit, Observation
from broker.planner import Action
from tests.broker.planner.replies import raw_reply, reply

# -- the well-behaved ------------------------------------------------------------------------

WORKER_TOOLS = ("write_file", "put_object", "send", "receive", "now", "read_file",
                "wait_event", "register_tool")
WORKER_NEEDS = ("fs:/**:read,write", "obj:*:read,write", "proc:*:message", "clock:*:read",
                "tool:*:register,call")
ASK_WRITE = {"kind": "fs", "scope": "/ask/**", "rights": ["write"], "effect": "ask"}
TICK = """export default async function run(args: {i: number}, libos: any) {
  const t = await libos.clock.now();
  await libos.fs.write(`/w/tick-${args.j}.txt`, `${args.i} ${t}`);
  return args.i;
}"""
DRAIN_WAIT = 5.0  # seconds a draining worker waits for mail in one step


def ticks(j: int) -> bool:
    """Workers that call a TypeScript tool of their own each round."""
    return j % 10 == 0


def asks(j: int) -> bool:
    """Workers that ask a person before one write in five rounds."""
    return j % 10 == 5


def worker_caps(j: int, partner: int) -> list[Any]:
    caps: list[Any] = ["fs:/w/**:read,write", "fs:/shared.txt:read", "obj:w:write",
                       f"proc:{partner}:message", "proc:event:stop:message", "clock:*:read"]
    if ticks(j):
        caps.append("tool:*:register,call")
    if asks(j):
        caps.append(ASK_WRITE)
    return caps


def round_actions(j: int, i: int, partner: int) -> list[CallTool]:
    actions = [
        CallTool("write_file", {"path": f"/w/{j}.txt", "data": f"{j}:{i}\n", "append": True}),
        CallTool("put_object", {"ns": "w", "name": f"w{j}", "type": "json", "value": i}),
        CallTool("send", {"pid": partner, "body": f"{j}:{i}"}),
        CallTool("receive", {"timeout": 0}),
        CallTool("now", {}),
        CallTool("read_file", {"path": "/shared.txt"}),
    ]
    if ticks(j):
        actions.append(CallTool("tick", {"i": i, "j": j}))
    if asks(j) and i % 5 == 0:
        actions.append(CallTool("write_file", {"path": f"/ask/{j}-{i}.txt", "data": "ok"}))
    actions.append(CallTool("wait_event", {"name": "stop", "timeout": 0}))
    return actions


def waits(action: CallTool) -> bool:
    """Actions that wait on purpose (for mail, for a person): not counted as latency."""
    return action.args.get("timeout", 0) > 0 or str(action.args.get("path", "")).startswith(
        "/ask/")


@dataclass
class Latencies:
    """Seconds per step of the well-behaved, by phase ("baseline", "soak", ...), counted
    from when the step was due (its think time over), so waiting for the broker's thread
    counts too."""

    phase: str = "setup"
    steps: dict[str, list[float]] = field(default_factory=dict)

    def add(self, seconds: float) -> None:
        self.steps.setdefault(self.phase, []).append(seconds)


class WorkerPlanner:
    """Worker `j` of the soak, messaging `partner`; its state is rebuilt from its history."""

    def __init__(self, j: int, partner: int, think: float, latencies: Latencies) -> None:
        self.j, self.partner, self.think, self.latencies = j, partner, think, latencies
        self.seen = 0
        self.round = 0
        self.queue: list[CallTool] = round_actions(j, 0, partner)
        self.stopping = False  # the stop event was seen: end marker next, then drain
        self.ended = False  # our end marker is sent
        self.got_end = False  # our predecessor's end marker came
        self.due: float | None = None
        self.timed = False

    def _observe(self, obs: Observation) -> None:
        action = obs.action
        if not isinstance(action, CallTool):
            return
        if action.name == "wait_event" and obs.ok and obs.result is not None:
            self.stopping = True
        elif action.name == "send" and str(action.args.get("body", "")).endswith(":end"):
            self.ended = True
        elif action.name == "receive" and isinstance(obs.result, dict) and str(
                obs.result.get("body", "")).endswith(":end"):
            self.got_end = True
        if self.queue and self.queue[0] == action:
            self.queue.pop(0)
        if not self.queue and not self.stopping:
            self.round += 1
            self.queue = round_actions(self.j, self.round, self.partner)

    def _next(self) -> Action:
        if not self.stopping:
            return self.queue[0]
        if not self.ended:
            return CallTool("send", {"pid": self.partner, "body": f"{self.j}:end"})
        if not self.got_end:
            return CallTool("receive", {"timeout": DRAIN_WAIT})
        return Exit(0, {"rounds": self.round})

    async def next_action(self, history: Sequence[Observation]) -> Action:
        if self.due is not None and self.timed:
            self.latencies.add(time.monotonic() - self.due)
        for obs in history[self.seen:]:
            self._observe(obs)
        self.seen = len(history)
        action = self._next()
        if isinstance(action, CallTool) and not waits(action) and not self.stopping:
            await trio.sleep(self.think)
            self.due, self.timed = time.monotonic(), True
        else:
            self.due, self.timed = None, False
        return action


# -- the hostile -----------------------------------------------------------------------------

HOSTILE_TOOLS = ("read_file", "now", "register_tool")
HOSTILE_NEEDS = ("fs:/**:read,write", "tool:*:register,call", "clock:*:read", "shell:*:run",
                 "net:*:fetch", "proc:*:spawn,message")
BIG_FILE = "/big/8mib.txt"
REPLY_CHARS = 200_000
DEEP = "[" * 5000 + "]" * 5000


def hostile_caps(fetch_port: int) -> list[Any]:
    return ["fs:/big/**:read", "tool:*:register,call", "clock:*:read", "shell:sleep *:run",
            {"kind": "fs", "scope": "/hostile/**", "rights": ["write"], "effect": "ask"},
            {"kind": "net", "scope": f"GET http://127.0.0.1:{fetch_port}/*",
             "rights": ["fetch"]},
            "proc:event:flood:message", "proc:idle:spawn"]


def _fan(count: int, call: str) -> str:
    """A tool making `count` calls at once (`call` may use the index `i`); it returns how
    many ended how ({"OK": n, "LIMIT_EXCEEDED": m, ...})."""
    return f"""export default async function run(a: any, libos: any) {{
  const got = await Promise.allSettled(Array.from({{length: {count}}}, (_, i) => {call}));
  const ends: Record<string, number> = {{}};
  for (const r of got) {{
    const end = r.status === "fulfilled" ? "OK" : String((r as any).reason?.code);
    ends[end] = (ends[end] ?? 0) + 1;
  }}
  return ends; }}"""


def _loop(count: int, call: str) -> str:
    """A tool making `count` calls one after another, each error caught."""
    return f"""export default async function run(a: any, libos: any) {{
  let refused = 0;
  for (let i = 0; i < {count}; i++) {{ try {{ await {call}; }} catch (e) {{ refused++; }} }}
  return refused; }}"""


def flood_tools(fetch_port: int) -> dict[str, str]:
    """The hostile's TypeScript tools, by name; the host calls each over and over."""
    return {
        "logs": """export default async function run(a: any, libos: any) {
  for (let i = 0; i < 100_000_000; i++) console.log(""); return "never"; }""",
        "refused": _loop(20000, 'libos.syscall(["no.such", "clock.now", "fs.read"][i % 3], '
                                '[{}, {bad: 1}, {path: "/etc/passwd"}][i % 3])'),
        "shells": _fan(100, 'libos.shell.run(["sleep", "0.2"])'),
        "fetches": _fan(100, f'libos.net.fetch("http://127.0.0.1:{fetch_port}/slow")'),
        "asks": _fan(1000, "libos.fs.write(`/hostile/f${i}.txt`, 'x')"),
        "leaf": """export default async function run(a: any, libos: any) {
  await new Promise((r) => setTimeout(r, 300)); return 1; }""",
        "tools": _fan(24, 'libos.tool.call("leaf", {})'),
        "events": _loop(20000, 'libos.syscall("proc.raise", {name: "flood", data: i})'),
        # Children until the live bound refuses one, then one killed for each refused.
        "spawns": """export default async function run(a: any, libos: any) {
  const live: number[] = [];
  for (let i = 0; i < 20000; i++) {
    try { live.push(await libos.syscall("proc.spawn", {image: "idle"})); }
    catch (e) {
      const old = live.shift();
      if (old !== undefined) await libos.syscall("proc.signal", {pid: old, signal: "kill"});
    }
  }
  return live.length; }""",
        "bomb": """export default async function run(a: any, libos: any) {
  const heap: unknown[] = []; while (true) heap.push(new Array(10000).fill({x: 1})); }""",
    }


FLOODS = ("logs", "refused", "shells", "fetches", "asks", "tools", "events", "spawns", "bomb")


class HostileModel:
    """The hostile's model: a cycle of replies each of which item 4 or 5 of issue 20 names,
    with a good reply between bad ones so its failure budget is never spent (what it must
    not do is end the process). It counts the typed errors it is told in tool results."""

    def __init__(self, kind: str = "openai") -> None:
        self.kind = kind
        self.told: Counter[str] = Counter()

    def __call__(self, n: int, request: dict[str, Any]) -> Any:
        self._count(request)
        kind, big_text = self.kind, "x" * REPLY_CHARS
        read = ("read_file", {"path": BIG_FILE})
        step = n % 6
        if step == 0:  # 200 KB of text and a read of 8 MiB
            return reply(kind, f"{n}:{big_text}", [(f"c{n}", *read)])
        if step == 1:  # 5,000 calls in one reply
            return reply(kind, "", [(f"c{n}-{k}", "now", {}) for k in range(5000)])
        if step == 2:  # 200 KB of text and 32 reads of 8 MiB queued
            return reply(kind, big_text, [(f"c{n}-{k}", *read) for k in range(32)])
        if step == 3:  # arguments nested 5,000 deep
            return raw_reply(kind, f"c{n}", "read_file", '{"a": ' + DEEP + "}")
        if step == 4:  # arguments over the size limit
            return reply(kind, "", [(f"c{n}", "read_file", {"path": "x" * 200_000})])
        return reply(kind, big_text, [(f"c{n}", "now", {})])

    def _count(self, request: dict[str, Any]) -> None:
        """The tool results since the model's last reply (chat completions' format)."""
        for message in reversed(request.get("messages", [])):
            if message.get("role") != "tool":
                break
            for code in ("INVALID_ARGUMENT", "LIMIT_EXCEEDED"):
                if f'"error": "{code}"' in str(message.get("content")):
                    self.told[code] += 1
