"""A call that waits for a syscall whose answer depends on what the same call does next must
still get there (ts-runtime/main.ts, `awaitsAnswersAlone`). A call waiting for its syscalls'
answers alone is read for in a blocking read of stdin; but a tool may start a blocking
syscall (a receive, an event or child wait), go on with work of its own through more
microtask hops than the runtime waits, or through the event loop (WebCrypto), and only then
make the syscall that the first one waits for. Blocked in read(2), the runtime never ran that
work: the call hung until its deadline killed the sandbox (LimitExceeded), where the async read
it replaced answered at once. Only non-blocking syscalls (the broker answers each by itself)
may be waited for in a blocking read.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio

from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.testing import NullHost


class Mailbox(NullHost):
    """`proc.receive` waits for the next `proc.send` (a blocking syscall, as the kernel's
    table says); everything else answers at once."""

    def __init__(self) -> None:
        super().__init__(0.5, authority="mail/-")
        self.sent = trio.Event()
        self.body: Any = None

    def is_blocking(self, name: str) -> bool:
        return name in ("proc.receive", "clock.sleep")

    async def syscall(self, name: str, args: Any) -> Any:
        if name == "proc.receive":
            await self.sent.wait()
            self.sent = trio.Event()
            return self.body
        return self.syscall_now(name, args)

    def syscall_now(self, name: str, args: Any) -> Any:
        if name == "proc.send":
            self.body = args["body"]
            self.sent.set()
            return None
        return self.answer


# Its own work before the send: many microtask hops, or a WebCrypto digest (an async op the
# event loop completes).
HOPS = "for (let i = 0; i < 200; i++) await null;"
DIGEST = "await crypto.subtle.digest('SHA-256', new Uint8Array(64));"
TOOL = """export default async function run(_args: unknown, libos: any) {
  const got = libos.proc.receive();
  WORK
  await libos.proc.send(1, "to myself");
  return await got;
}"""
# A neighbour: a call that waits for non-blocking syscalls alone (the fast path stays).
NOW = """export default async function run(_args: unknown, libos: any) {
  let t = 0;
  for (let i = 0; i < 5; i++) t = await libos.clock.now();
  return t;
}"""


def code(name: str, source: str) -> ToolCode:
    return ToolCode(name, "ts", source.encode(), hashlib.sha256(source.encode()).hexdigest())


@pytest.mark.parametrize("work", [HOPS, DIGEST], ids=["hops", "webcrypto"])
async def test_a_call_whose_wait_its_own_later_syscall_ends_is_answered(work: str) -> None:
    host = Mailbox()
    tool = code("self_mail", TOOL.replace("WORK", work))
    async with DenoSandbox(spares=0) as deno:
        for _ in range(3):  # (a warm sandbox: its first call waits for its import)
            with trio.fail_after(20):  # (never its deadline: that kills it, LimitExceeded)
                assert await deno.call(tool, {}, host, CallLimits(deadline=10)) == "to myself"
            assert await deno.call(code("now", NOW), {}, host, CallLimits()) == 0.5
        assert deno.stats["killed"] == 0
