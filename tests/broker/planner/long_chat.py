"""A long conversation with big replies, through a real SDK and the loopback server: what
its checkpoints and stored conversation cost. Shared by the test and `bench/chat_bench.py`."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from broker import AgentImage, Kernel
from tests.broker.planner.replay import replay_server
from tests.broker.planner.replies import reply

REPLY_CHARS = 200_000


def settings(kind: str, url: str) -> dict[str, Any]:
    return {"kind": kind, "model": "m", "api_key_env": "LIBOS_TEST_KEY", "max_retries": 0,
            "base_url": url + ("/v1" if kind == "openai" else ""), "timeout": 60}


async def long_chat(kernel: Kernel, kind: str, steps: int) -> dict[str, Any]:
    """`steps` replies of `REPLY_CHARS` characters of text and a call each, then "done"."""
    written: Counter[int] = Counter()  # conversation turn -> times written
    sizes = {"checkpoint_max": 0, "turn_rows": 0, "written": 0}
    save = kernel.store.save_checkpoint

    def measured(pid: int, step: int, state: dict[str, Any], observation: Any = None,
                 turns: dict[int, Any] | None = None, *, defer: bool = False,
                 **passed: Any) -> None:
        size = len(json.dumps(state))
        sizes["checkpoint_max"] = max(sizes["checkpoint_max"], size)
        sizes["written"] += size + len(json.dumps(turns or {}))
        written.update((turns or {}).keys())
        save(pid, step, state, observation, turns, defer=defer, **passed)

    def responder(n: int, request: dict[str, Any]) -> dict[str, Any]:
        if n >= steps:
            return reply(kind, "done")
        return reply(kind, f"{n}:" + "x" * REPLY_CHARS, [(f"c{n}", "now", {})])

    kernel.store.save_checkpoint = measured  # type: ignore[method-assign]
    start = time.perf_counter()
    with replay_server([], responder, keep_requests=False) as api:
        await kernel.register_image(AgentImage(f"talker-{kind}", tools=("now",),
                                               needs=("clock:*:read",),
                                               planner=settings(kind, api.url)))
        pid = kernel.spawn(f"talker-{kind}", caps=["clock:*:read"], args="talk")
        status = await kernel.wait(pid, timeout=max(60, steps * 2))
    seconds = time.perf_counter() - start
    kernel.store.save_checkpoint = save  # type: ignore[method-assign]
    rows = kernel.store._query("SELECT SUM(LENGTH(turn)) AS n, COUNT(*) AS c FROM"
                               " planner_turns WHERE pid=?", (pid,))[0]
    checkpoint = kernel.store._query("SELECT LENGTH(state) AS n FROM checkpoint_log WHERE pid=?"
                                     " ORDER BY id DESC LIMIT 1", (pid,))[0]["n"]
    return {"status": status, "steps": steps, "checkpoint_bytes": checkpoint,
            "checkpoint_max_bytes": sizes["checkpoint_max"],
            "conversation_rows": rows["c"], "conversation_bytes": rows["n"],
            "bytes_written": sizes["written"], "most_writes_of_a_turn": max(written.values()),
            "largest_request_bytes": max(api.sizes), "requests": len(api.sizes),
            "seconds": round(seconds, 2)}
