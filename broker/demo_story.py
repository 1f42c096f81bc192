"""The story `libos demo` tells, act by act (what each act shows: `broker/demo.py`, which starts
the sandboxes and act 2's broker before importing this module and the kernel)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio
from rich.console import Console, RenderableType
from rich.text import Text

from broker import render
from broker.assets import asset_dir
from broker.errors import SandboxCrashed
from broker.kernel import AgentImage, Kernel
from broker.kernel.approvals import AutoPolicy
from broker.planner import CallTool, Exit, Observation, Planner, ScriptedPlanner
from broker.providers.clock import FakeClock
from sandboxes.base import Sandbox

WASM_TOOLS = asset_dir("wasm-tools") / "examples"
README = "# Quarterly plan\nShip the sandbox.\nMeasure everything.\nAudit what we did.\n"
SECRET = "token-that-the-analyst-must-not-see\n"
# How often a broker of the demo looks whether night-shift waits yet (a step takes ms).
POLL = 0.001

WORD_COUNT_TS = """\
// Count the words of a file, through the libos fs wrapper (a syscall to the broker).
export default async function run(args: { path: string }, libos: any) {
  const text: string = await libos.fs.read(args.path);
  return { words: text.split(/\\s+/).filter((w) => w.length > 0).length };
}
"""

ESCAPE_TS = """\
// A tool that tries to reach the host directly instead of through libos.
export default async function run(_args: unknown, _libos: unknown) {
  const tried: Record<string, string> = {};
  const attempts: Record<string, () => Promise<unknown>> = {
    "read /etc/passwd": () => Deno.readTextFile("/etc/passwd"),
    "env HOME": async () => Deno.env.get("HOME"),
    "fetch": () => fetch("http://127.0.0.1:1/"),
    "run /bin/sh": () => new Deno.Command("/bin/sh").output(),
  };
  for (const [what, attempt] of Object.entries(attempts)) {
    try { await attempt(); tried[what] = "ESCAPED"; }
    catch (e) { tried[what] = (e as Error).name; }
  }
  return tried;
}
"""

SUMMARY_PY = """\
def run(args, libos):
    text = libos.fs.read(args["path"])
    lines = [line for line in text.splitlines() if line.strip()]
    return {"title": lines[0].lstrip("# "), "points": len(lines) - 1}
"""

SCHEMA_PATH = {"type": "object", "properties": {"path": {"type": "string"}},
               "required": ["path"], "additionalProperties": False}

ANALYST = AgentImage(
    name="analyst",
    tools=("read_file", "write_file", "put_object"),
    needs=("fs:/project/**:read", "fs:/reports/**:write", "obj:shared:write"),
    planner={"kind": "scripted", "actions": [
        {"tool": "read_file", "args": {"path": "/project/README.md"}},
        {"tool": "read_file", "args": {"path": "/secrets/token.txt"}},
        {"tool": "write_file", "args": {"path": "/reports/summary.md",
                                        "data": "4 lines, 1 plan", "reason": "file my report"}},
        {"tool": "write_file", "args": {"path": "/reports/extra.md", "data": "more",
                                        "reason": "one more file"}},
        {"tool": "put_object", "args": {"ns": "shared", "name": "review", "type": "json",
                                        "value": {"verdict": "plan is sound"}}},
        {"exit": 0},
    ]},
)

LEAD = AgentImage(
    name="lead",
    tools=("make_dir", "write_file", "register_tool", "spawn", "wait", "get_object"),
    needs=("fs:/**:read,write", "obj:shared:read,write", "proc:analyst:spawn",
           "tool:*:register"),
)

COURIER = AgentImage(
    name="courier",
    tools=("read_file", "write_file"),
    needs=("fs:/secrets/**:read", "fs:/exports/**:write", "fs:/reviewed/**:write"),
    planner={"kind": "scripted", "actions": [
        {"tool": "read_file", "args": {"path": "/secrets/token.txt"}},
        {"tool": "write_file", "args": {"path": "/exports/token.txt", "data": "token-that…"}},
        {"tool": "write_file", "args": {"path": "/reviewed/digest.txt", "data": "sha256:9f…",
                                        "reason": "a digest of the token for the auditors"}},
        {"exit": 0},
    ]},
)
# Results through the first are `secret`; the exports refuse secret data, the reviewed
# directory asks a person about it.
COURIER_CAPS = [
    {"kind": "fs", "scope": "/secrets/**", "rights": ["read"], "labels": ["secret"]},
    {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "deny"}},
    {"kind": "fs", "scope": "/reviewed/**", "rights": ["write"], "flows": {"secret": "ask"}},
]

NIGHT_SHIFT = AgentImage(
    name="night-shift",
    tools=("write_file", "wait_event"),
    needs=("fs:/shift/**:write", "proc:event:*:message"),
    planner={"kind": "scripted", "actions": [
        {"tool": "write_file", "args": {"path": "/shift/log.txt", "data": "started\n",
                                        "append": True}},
        {"tool": "write_file", "args": {"path": "/shift/log.txt", "data": "half done\n",
                                        "append": True}},
        {"tool": "wait_event", "args": {"name": "dawn"}},
        {"tool": "write_file", "args": {"path": "/shift/log.txt", "data": "finished\n",
                                        "append": True}},
        {"exit": 0, "result": "shift over"},
    ]},
)


class Broker(Protocol):
    """Act 2's broker process, started ahead (`broker.demo.NightShift`)."""

    returncode: int | None

    def start(self) -> None: ...
    def go(self) -> str: ...
    def kill(self) -> None: ...
    def wait(self) -> int: ...


class Transcript:
    def __init__(self, out: Console) -> None:
        self.out = out

    def act(self, title: str) -> None:
        self.out.print(render.heading(title))

    def say(self, text: str, value: Any = None, style: str = "") -> None:
        self.out.print(self.line(text, value, style))

    def line(self, text: str, value: Any = None, style: str = "") -> Text:
        line = Text(text, style=style)
        if value is not None:
            line.append(" ")
            line.append(render.inert(value, 100))
        return line


def _lead_planner(has_python: bool) -> Planner:
    def register(name: str, lang: str, source: str, description: str) -> CallTool:
        return CallTool("register_tool", {"name": name, "lang": lang, "source": source,
                                          "schema": SCHEMA_PATH, "description": description})

    script: list[CallTool] = [
        CallTool("make_dir", {"path": "/project"}),
        CallTool("make_dir", {"path": "/reports"}),
        CallTool("write_file", {"path": "/project/README.md", "data": README}),
        register("word_count", "ts", WORD_COUNT_TS, "count the words of a file"),
        register("checksum", "wat", (WASM_TOOLS / "checksum.wat").read_text(),
                 "Adler-32 and CRC-32 of a file"),
    ]
    script += [
        CallTool("word_count", {"path": "/project/README.md"}),
        CallTool("checksum", {"path": "/project/README.md"}),
        CallTool("register_tool", {"name": "escape", "lang": "ts", "source": ESCAPE_TS,
                                   "description": "tries to leave its sandbox"}),
        CallTool("escape", {}),
        CallTool("spawn", {"image": "analyst", "caps": [
            "fs:/project/**:read", "obj:shared:write",
            {"kind": "fs", "scope": "/reports/**", "rights": ["write"], "effect": "ask"}]}),
    ]

    # The Python tool comes last: Pyodide's start (from its snapshot, the demo's longest
    # wait) goes on while everything before it runs.
    python = [register("summarize", "python", SUMMARY_PY, "title and points"),
              CallTool("summarize", {"path": "/project/README.md"})] if has_python else []

    def plan(history: list[Observation]) -> CallTool | Exit:
        step = len(history)
        if step < len(script):
            return script[step]
        if step == len(script):
            return CallTool("wait", {"pid": history[-1].result})
        if step == len(script) + 1:
            return CallTool("get_object", {"ns": "shared", "name": "review"})
        if step - len(script) - 2 < len(python):
            return python[step - len(script) - 2]
        return Exit(0, "reviewed")

    return ScriptedPlanner(plan)


def _scripted_human() -> AutoPolicy:
    """The demo's person: approves the first report once, declines anything else."""
    answered: list[str] = []

    def decide(request: dict[str, Any]) -> str:
        answered.append("once" if not answered else "deny")
        return answered[-1]

    return AutoPolicy(decide, who="demo-person")


async def act_one(db: Path, sandboxes: list[Sandbox], t: Transcript,
                  closed: Callable[[], None] = lambda: None) -> None:
    """Act 1; `closed` is called once its broker has closed the store, before the act's
    record is printed (act 2's broker starts meanwhile: `free_the_store`)."""
    langs = {lang for s in sandboxes for lang in s.langs}
    shown: list[RenderableType] = []
    async with Kernel.open(db, clock=FakeClock(), sandboxes=sandboxes,
                           approvers=[_scripted_human()]) as kernel:
        for image in (ANALYST, LEAD, NIGHT_SHIFT, COURIER):
            await kernel.register_image(image)
        secrets = Path(kernel.fs.root, "secrets")  # type: ignore[attr-defined]
        secrets.mkdir(exist_ok=True)
        (secrets / "token.txt").write_text(SECRET)
        t.act("Act 1: tools written at run time, a narrower child, a person asked")
        if "python" not in langs:
            t.say("(Python tools skipped: Pyodide is not installed here; `libos setup`)",
                  style="dim")
        lead = kernel.spawn("lead", caps=[
            "fs:/project/**:read,write", "fs:/reports/**:write", "fs:/secrets/**:read",
            "obj:shared:read,write", "proc:analyst:spawn", "tool:ts:register",
            "tool:wat:register", "tool:python:register"], planner=_lead_planner(
                "python" in langs))
        await kernel.wait(lead)
        for pid in (lead, lead + 1):
            shown.extend(render.history(kernel.process(pid)))
        for name, spec in sorted(kernel.process(lead).tools.items()):
            if spec["lang"] != "builtin":
                shown.append(t.line(f"registered {name} ({spec['lang']}), stored as",
                                    spec["hash"][:16]))
        escape = next(o for o in kernel.process(lead).history
                      if o.action and o.action.name == "escape")
        for what, outcome in (escape.result or {}).items():
            shown.append(t.line(f"escape attempt {what!r} →", outcome,
                                style="green" if outcome != "ESCAPED" else "bold red"))
        for request in kernel.approvals(state=None):
            shown.append(t.line(f"person asked: pid {request['pid']} {request['syscall']} "
                                f"{request['resource']} (reason: {request['reason']}) → "
                                "answered", request["answer"], style="yellow"))
    closed()
    for line in shown:
        t.out.print(line)


def free_the_store(db: Path, broker: Broker) -> None:
    """Act 1's broker has closed the store: act 2's broker may open it and run its agent up to
    the wait while act 1's record is printed (act 2 only prints what it then says)."""
    Path(db.with_name(db.stem + "-fs"), "shift").mkdir(exist_ok=True)
    broker.start()


def act_two(db: Path, broker: Broker, t: Transcript) -> int:
    t.act("Act 2: a broker is killed with SIGKILL mid-job")
    Path(db.with_name(db.stem + "-fs"), "shift").mkdir(exist_ok=True)
    words = broker.go().split()
    if not words or words[0] != "WAITING":
        broker.kill()
        raise SandboxCrashed("the night-shift broker did not start")
    pid = int(words[1])
    t.say(f"a broker process runs night-shift (pid {pid}); it wrote two log lines and "
          "waits for the event 'dawn'")
    broker.kill()
    broker.wait()
    t.say("kill -9 →", f"broker exited with signal {-broker.returncode}", style="red")
    return pid


async def act_three(db: Path, pid: int, t: Transcript) -> bool:
    t.act("Act 3: a new broker resumes from the checkpoint")
    async with Kernel.open(db) as kernel:
        proc = kernel.process(pid)
        t.say(f"pid {pid} is back from its checkpoint with {len(proc.history)} steps of "
              "history; the interrupted wait touched nothing, so it runs again")
        while proc.state.value != "waiting":
            await trio.sleep(POLL)
        t.say("the host raises the event 'dawn'")
        kernel.raise_event("dawn", {"by": "demo"})
        status = await kernel.wait(pid, timeout=30)
        t.say("night-shift:", f"{status['state']}, result {status['result']!r}")
        log = Path(kernel.fs.root, "shift", "log.txt").read_text()  # type: ignore[attr-defined]
        t.say("its log (each line once, nothing repeated):", log)
        await labels_scene(kernel, t)
        t.act("The record")
        t.out.print(render.tree(kernel.ps()))
        t.out.print(render.objects_table(kernel.store.list_objects()))
        denials = [r for r in kernel.audit() if r["phase"] in ("denied", "ask")]
        t.out.print(render.audit_table(denials, detail=False))
        count, problems = kernel.verify_audit()
        t.out.print(render.verdict(count, problems))
        return not problems


async def labels_scene(kernel: Kernel, t: Transcript) -> None:
    t.act("Labels: the secret remembers where it came from")
    for name in ("exports", "reviewed"):
        Path(kernel.fs.root, name).mkdir(exist_ok=True)  # type: ignore[attr-defined]
    with kernel.approver(AutoPolicy(lambda request: "once", who="demo-person")):
        courier = kernel.spawn("courier", caps=COURIER_CAPS)
        await kernel.wait(courier, timeout=30)
    for line in render.history(kernel.process(courier)):
        t.out.print(line)
    t.say(f"courier (pid {courier}) is labelled",
          render.show_labels(kernel.process(courier).label))
    for record in kernel.audit(courier):
        if record["phase"] == "denied":
            t.say(f"refused flow: {record['syscall']} {record['resource']}, labels",
                  render.show_labels(record["detail"]["labels"]), style="red")
        if record["phase"] == "ask":
            t.say(f"person asked: {record['syscall']} {record['resource']}, labels "
                  f"{render.show_labels(record['detail']['labels'])} → declassified once",
                  style="yellow")
