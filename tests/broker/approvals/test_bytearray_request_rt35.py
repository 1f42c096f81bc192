"""Red team 35 on red team 31's check that a request's shown arguments give its args_hash: a
host's call with a bytearray among its arguments (a value the broker takes, and copies for
a host tool as a bytearray, `json_tree.copy_tree`) under an `ask` capability was stored with
the bytes as `{"$bytes": ...}`, read back as bytes, whose hash is not the bytearray's: the
request was "edited in the database", left out of every listing, and the call itself failed
with that Unreadable. A bytearray is now stored as `{"$bytearray": ...}` and read back as
one; the request is listed, approved and run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, HostCall, Kernel, host_tool


@host_tool(kind="email", right="send", resource=lambda args: args["to"])
def send_note(call: HostCall, to: str, body: Any = None) -> dict:
    """Send a message."""
    return {"sent": to, "body": repr(body)}


async def ask_and_approve(tmp_path: Path, body: Any
                          ) -> tuple[list[Any], list[Any], list[tuple[str, str]]]:
    """`send_note` called with `body` under an `ask` capability, its request approved: the
    requests listed then, the call's result, and the process's records' (syscall, phase)."""
    async with Kernel.open(tmp_path / "k.db", host_tools=[send_note]) as kernel:
        await kernel.register_image(AgentImage("a", tools=("send_note",),
                                               needs=["email:*:send"]))
        pid = kernel.spawn("a", caps=[{"kind": "email", "scope": "*", "rights": ["send"],
                                       "effect": "ask"}])
        result: list[Any] = []

        async def call() -> None:
            result.append(await kernel.call_tool(pid, "send_note", {"to": "ann", "body": body}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(30):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            listed = kernel.approvals()
            kernel.approve(listed[0]["id"])
        return listed, result, [(r["syscall"], r["phase"]) for r in kernel.audit(pid)]


async def test_a_request_with_a_bytearray_is_listed_and_answered(tmp_path: Path) -> None:
    [shown], result, _ = await ask_and_approve(tmp_path, bytearray(b"hi"))
    assert shown["args"]["body"] == {"$bytearray": "aGk="}
    assert result == [{"sent": "ann", "body": "bytearray(b'hi')"}]


async def test_the_neighbour_bytes_still_shown_as_bytes(tmp_path: Path) -> None:
    [shown], result, _ = await ask_and_approve(tmp_path, b"hi")
    assert shown["args"]["body"] == {"$bytes": "aGk="}
    assert result == [{"sent": "ann", "body": "b'hi'"}]


async def test_a_request_with_a_memoryview_is_listed_and_answered(tmp_path: Path) -> None:
    """A memoryview's args_hash was of its repr, which names its address: no stored form gave
    it back, its request was called edited in the database and never listed. It is hashed
    and stored as the bytes it views, as bytes are."""
    with trio.fail_after(10):
        [shown], result, _ = await ask_and_approve(tmp_path, memoryview(b"hi"))
    assert shown["args"]["body"] == {"$bytes": "aGk="}
    assert result and result[0]["sent"] == "ann"
