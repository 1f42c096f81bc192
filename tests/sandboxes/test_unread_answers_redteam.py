"""Red team (sandbox surface), open: answers a Deno sandbox leaves unread wait in the broker.

A blocking syscall's answer is written to the sandbox's stdin by the task that ran it; a tool
that spins (no turn of its event loop, so nothing reads stdin) after starting many of them
leaves each answer held in the broker, in full, until its deadline kills it. One tool that
started 100 `tool.call`s of the builtin `read_file` on an 8 MiB file and spun took the
broker from 55 MiB to 1.68 GB (up to the 1,000 syscalls a sandbox may leave pending, each
answer up to a frame: the host's memory). A bound on unread bytes that kills the sandbox was
tried and refused a legitimate tool too: one awaiting 16 such reads at once (Promise.all)
left more than 64 MiB unread for a moment, Deno reading slower than the broker answers. A fix
needs flow control (answers produced only as the sandbox reads), not a kill.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker import LimitExceeded
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import LIMITS, agent, kernel_over
from tests.sandboxes.test_deno import register
from tests.sandboxes.test_deno_attacks import body

READS = 8  # answers of 8 MiB each, left unread: 64 MiB held in the broker

UNREAD = body(f"""
  for (let i = 0; i < {READS}; i++) {{
    libos.syscall("tool.call", {{name: "read_file", args: {{path: "/data/big"}}}}).catch(() => 0);
  }}
  const t = Date.now();
  while (Date.now() - t < 4000) {{}}  // no turn of the event loop: nothing reads stdin
  return "spun";""")


@pytest.mark.xfail(strict=True, reason="answers a sandbox leaves unread are held in the broker "
                   "until its deadline (DESIGN section 9): a bound needs flow control")
async def test_answers_left_unread_are_bounded(tmp_path: Path, deno: DenoSandbox) -> None:
    limits = dataclasses.replace(LIMITS, deadline=6.0)
    async with kernel_over(tmp_path, deno, limits) as k:
        (tmp_path / "libos-fs" / "data" / "big").write_bytes(b"y" * (8 << 20))
        pid = agent(k)
        await register(k, pid, "spinner", UNREAD)
        # (The bound's own refusal: a deadline's, which names the tool, is not it. Named
        # "unread", the tool made the test pass whenever a loaded machine hit the deadline.)
        with pytest.raises(LimitExceeded, match="answers left unread"):
            await k.call_tool(pid, "spinner", {})
