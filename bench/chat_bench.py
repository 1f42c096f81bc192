"""A model planner's conversation over a long run: `python -m bench.chat_bench [--steps N]`.

N (default 1,000) replies of 200 KB of text with a tool call each, through the real OpenAI
and Anthropic SDKs against a loopback server: the checkpoint's size, the stored
conversation, bytes written in all, and the largest request.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from tests.broker.planner.long_chat import long_chat


def run(steps: int = 1000) -> dict[str, Any]:
    os.environ.setdefault("LIBOS_TEST_KEY", "sk-bench")

    async def main(root: Path) -> dict[str, Any]:
        out = {}
        for kind in ("openai", "anthropic"):
            async with Kernel.open(root / f"{kind}.db") as kernel:
                figures = await long_chat(kernel, kind, steps)
                figures["exit_code"] = figures.pop("status")["exit_code"]
                out[kind] = figures
        return out

    with tempfile.TemporaryDirectory(prefix="libos-chat-") as tmp:
        return trio.run(main, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    print(json.dumps(run(parser.parse_args().steps), indent=2))
