"""Smoke runs against real models (not benchmarks, not run by `python -m bench`).

`python -m bench.smoke_openai` / `python -m bench.smoke_anthropic` run one agent with a real
model when OPENAI_API_KEY / ANTHROPIC_API_KEY is set, and say "skipped" (exit 0) otherwise.
The model gets file tools under /work and register_tool; it is asked to write and read a
file, to try a path outside its grant (refused), and to finish. Set LIBOS_SMOKE_MODEL to pick
the model, OPENAI_BASE_URL for another OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio
from rich.console import Console

from broker import AgentImage
from broker.run import exit_code, run_agent

MODELS = {"openai": ("OPENAI_API_KEY", "gpt-4.1-mini"),
          "anthropic": ("ANTHROPIC_API_KEY", "claude-sonnet-4-5")}
GOAL = ("Make the directory /work, write the text 'hello from libos' to /work/hello.txt, "
        "read it back, then try to read /etc/hostname (you are not allowed to: note the "
        "error code you get). Finish with one line: the file's content and that code.")


def main(kind: str) -> int:
    env, default_model = MODELS[kind]
    if not os.environ.get(env):
        print(f"smoke {kind}: skipped ({env} is not set)")
        return 0
    with tempfile.TemporaryDirectory(prefix="libos-smoke-") as tmp:
        db = Path(tmp) / "smoke.db"
        image = Path(tmp) / "smoke.json"
        image.write_text(json.dumps(AgentImage(
            "smoke", tools=("make_dir", "write_file", "read_file", "list_dir",
                            "register_tool"),
            needs=("fs:/work/**:read,write", "tool:*:register,call"),
            planner={"kind": kind, "model": os.environ.get("LIBOS_SMOKE_MODEL",
                                                           default_model),
                     "api_key_env": env, "max_tokens": 1024}).to_json()))
        status = trio.run(partial(run_agent, db, str(image), GOAL, None, Console(),
                                  timeout=300.0))
        written = (Path(tmp) / "smoke-fs" / "work" / "hello.txt")
        ok = exit_code(status) == 0 and written.is_file()
        print(f"smoke {kind}: {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "openai"))
