"""`libos demo`: the story of the authority boundary, deterministic and in seconds.

A parent agent spawns a worker with a narrower grant. The worker reads what it was given,
is denied a file outside it (the denial lands in the audit), and writes its summary as a
typed object to a shared namespace; the parent waits and reads it. Then the process tree,
the objects and the verified audit chain are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import render
from broker.kernel import AgentImage, Kernel
from broker.planner import CallTool, Exit, Observation, Planner, ScriptedPlanner
from broker.providers.clock import FakeClock

SUMMARY_TYPE = {
    "type": "object",
    "properties": {"source": {"type": "string"}, "words": {"type": "integer"},
                   "first_line": {"type": "string"}},
    "required": ["source", "words"],
    "additionalProperties": False,
}

README = "# Quarterly plan\nShip the sandbox.\nMeasure everything.\n"
SECRET = "token-that-the-worker-must-not-see\n"

WORKER = AgentImage(
    name="worker",
    tools=("read_file", "put_object", "whoami"),
    needs=("fs:/project/**:read", "obj:shared:write"),
    types={"summary": SUMMARY_TYPE},
    planner={"kind": "scripted", "actions": [
        {"tool": "read_file", "args": {"path": "/project/README.md"}},
        {"tool": "read_file", "args": {"path": "/secrets/token.txt"}},
        {"tool": "put_object", "args": {
            "ns": "shared", "name": "readme-summary", "type": "summary",
            "value": {"source": "/project/README.md", "words": len(README.split()),
                      "first_line": README.splitlines()[0]}}},
        {"exit": 0, "result": "summary written"},
    ]},
    description="reads project files and writes summaries",
)

PARENT = AgentImage(
    name="lead",
    tools=("make_dir", "write_file", "spawn", "wait", "get_object"),
    needs=("fs:/**:read,write", "obj:shared:read,write", "proc:worker:spawn"),
    description="plans work and hands it to workers",
)


async def run_demo(db: Path, out: Any) -> bool:
    """Run the demo against a fresh store at `db`; print to `out` (a rich Console).
    Returns whether the audit chain verified."""
    async with Kernel.open(db, clock=FakeClock()) as kernel:
        for image in (WORKER, PARENT):
            await kernel.register_image(image)
        # The host puts a secret in the tree; only the lead is granted it.
        secrets = Path(kernel.fs.root, "secrets")  # type: ignore[attr-defined]
        secrets.mkdir(exist_ok=True)
        (secrets / "token.txt").write_text(SECRET)
        parent = kernel.spawn("lead", caps=[
            "fs:/project/**:read,write", "fs:/secrets/**:read",
            "obj:shared:read,write", "proc:worker:spawn",
        ], planner=_lead_planner())
        await kernel.wait(parent)
        out.print(render.heading("Steps"))
        for proc in sorted(kernel.ps(), key=lambda p: p["pid"]):
            for line in render.history(kernel.process(proc["pid"])):
                out.print(line)
        out.print(render.heading("Process tree"))
        out.print(render.tree(kernel.ps()))
        out.print(render.heading("Capabilities of the worker"))
        out.print(render.caps_table(kernel.capabilities(parent + 1), handles=False))
        out.print(render.heading("Objects"))
        out.print(render.objects_table(kernel.store.list_objects()))
        out.print(render.heading("Audit (denials)"))
        out.print(render.audit_table([r for r in kernel.audit() if r["phase"] == "denied"]))
        count, problems = kernel.verify_audit()
        out.print(render.verdict(count, problems))
        return not problems


def _lead_planner() -> Planner:
    def plan(history: list[Observation]) -> CallTool | Exit:
        script = [
            CallTool("make_dir", {"path": "/project"}),
            CallTool("write_file", {"path": "/project/README.md", "data": README}),
            CallTool("spawn", {"image": "worker",
                               "caps": ["fs:/project/**:read", "obj:shared:write"]}),
        ]
        if len(history) < len(script):
            return script[len(history)]
        if len(history) == len(script):
            child = history[2].result
            return CallTool("wait", {"pid": child})
        if len(history) == len(script) + 1:
            return CallTool("get_object", {"ns": "shared", "name": "readme-summary"})
        return Exit(0, history[-1].result)

    return ScriptedPlanner(plan)
