"""A real broker for the crash harness: `python -m tests.broker.kernel.crash_agent DB`.

On first start it spawns WORKERS scripted agents that append unique lines to files, write
versioned objects, message each other, wait for events the host raises and spend a one-shot
grant; a "shifter" writes a line, then replaces its image (`proc.exec`) with "shifted", which
writes another and exits. Later starts find them in the store and the kernel resumes them. A
host-driven "scribe" writes objects and prints `ACK <version>` only after each write returned:
what the harness may demand back after a crash. Prints READY once recovered and running, DONE when
every agent has ended. With `LIBOS_KILL_AT=POINT:N` it kills itself at that kill point (see
`kill_points`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from broker import AgentImage, Kernel
from tests.broker.kernel import kill_points

WORKERS = 6
STEPS = int(os.environ.get("LIBOS_CRASH_STEPS", "30"))
# Long enough that the harness's kills land mid-work, short enough for a test.
PAUSE = float(os.environ.get("LIBOS_CRASH_PAUSE", "0.2"))
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "proc:*:message", "clock:*:sleep")
TOOLS = ("write_file", "put_object", "send", "receive", "wait_event", "sleep")
SHIFT_LOG = kill_points.SHIFT_LOG
SHIFTER = {"kind": "scripted", "actions": [
    {"tool": "write_file", "args": {"path": SHIFT_LOG, "data": "before\n", "append": True}},
    {"tool": "sleep", "args": {"seconds": PAUSE}},
    {"tool": "exec", "args": {"image": "shifted"}},
    {"tool": "write_file", "args": {"path": SHIFT_LOG, "data": "never\n", "append": True}}]}
SHIFTED = {"kind": "scripted", "actions": [
    {"tool": "write_file", "args": {"path": SHIFT_LOG, "data": "after\n", "append": True}},
    {"exit": 0, "result": "shifted"}]}
SHIFTED_NEEDS = ("fs:/log/shift/**:write",)


def worker_script(j: int) -> list[dict[str, object]]:
    partner = (j + 1) % WORKERS + 1
    actions: list[dict[str, object]] = []
    if j == 0:
        # The one-shot grant: the first write spends it, the second must be refused.
        actions.append({"tool": "write_file", "args": {"path": "/once/token", "data": "1"}})
    for i in range(STEPS):
        actions += [
            {"tool": "write_file", "args": {"path": f"/log/{j}.txt", "data": f"{j}:{i}\n",
                                            "append": True}},
            {"tool": "put_object", "args": {"ns": "shared", "name": f"w{j}", "type": "json",
                                            "value": i}},
            {"tool": "send", "args": {"pid": partner, "body": f"{j}:{i}"}},
            {"tool": "receive", "args": {"timeout": 0}},
            {"tool": "wait_event", "args": {"name": "tick", "timeout": 0}},
            {"tool": "sleep", "args": {"seconds": PAUSE}},
        ]
    if j == 0:
        actions.append({"tool": "write_file", "args": {"path": "/once/token", "data": "2"}})
    actions.append({"exit": 0})
    return actions


async def main(db: Path) -> None:
    async with Kernel.open(db) as kernel:
        fresh = not kernel.ps()
        for j in range(WORKERS):
            await kernel.register_image(AgentImage(
                f"worker{j}", tools=TOOLS,
                needs=NEEDS, planner={"kind": "scripted", "actions": worker_script(j)}))
        await kernel.register_image(AgentImage("scribe", tools=("put_object",), needs=NEEDS))
        await kernel.register_image(AgentImage(
            "shifter", tools=("write_file", "sleep", "exec"),
            needs=(*NEEDS, "proc:shifted:exec"), planner=SHIFTER))
        await kernel.register_image(AgentImage(
            "shifted", tools=("write_file",), needs=SHIFTED_NEEDS, planner=SHIFTED))
        if fresh:
            for d in ("log", "once", "log/shift"):
                (Path(kernel.fs.root) / d).mkdir(exist_ok=True)  # type: ignore[attr-defined]
            for j in range(WORKERS):
                caps = ["fs:/log/**:write", "obj:shared:write", "clock:*:sleep",
                        f"proc:{(j + 1) % WORKERS + 1}:message", "proc:event:tick:message"]
                if j == 0:
                    caps.append({"kind": "fs", "scope": "/once/**", "rights": ["write"],
                                 "uses": 1})
                kernel.spawn(f"worker{j}", caps=caps)
            kernel.spawn("scribe", caps=["obj:acked:write"])
            kernel.spawn("shifter", caps=["fs:/log/**:write", "clock:*:sleep",
                                          "proc:shifted:exec"])
        scribe = next(p["pid"] for p in kernel.ps() if p["image"] == "scribe")
        workers = [p["pid"] for p in kernel.ps() if p["image"] != "scribe"]
        print("READY", flush=True)
        for n in range(10_000):
            if all(not kernel.process(w).alive for w in workers):
                break
            put = await kernel.call_tool(scribe, "put_object", {
                "ns": "acked", "name": "counter", "type": "json", "value": n})
            print(f"ACK {put['version']}", flush=True)
            kernel.raise_event("tick", n)
            await trio.sleep(0.01)
        print("DONE", flush=True)


if __name__ == "__main__":
    kill_points.install()
    trio.run(main, Path(sys.argv[1]))
