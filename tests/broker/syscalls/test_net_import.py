"""httpx is imported at the first fetch, on the broker's thread: never in a worker thread,
where the half-made module sat in sys.modules while code on the broker's thread (the OpenAI
SDK looks for httpx there) found it and failed ("partially initialized module 'httpx'"). A
fresh interpreter fetches from a loopback server while a task on the broker's thread looks at
sys.modules at every turn of the loop, as that SDK does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import bare_env

CHILD = r"""
import sys, tempfile, trio
from functools import partial
from pathlib import Path
from broker import Kernel
from broker.kernel.image import AgentImage

async def handle(stream):
    await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await stream.aclose()

async def main():
    assert "httpx" not in sys.modules
    seen = []
    async def look():
        while True:
            module = sys.modules.get("httpx")
            if module is not None:
                seen.append(hasattr(module, "Timeout"))
            await trio.lowlevel.checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            nursery.start_soon(look)
            async with Kernel.open(Path(tmp) / "libos.db") as kernel:
                base = f"http://127.0.0.1:{port}"
                await kernel.register_image(AgentImage("a", tools=("fetch",),
                                                       needs=("net:*:fetch",)))
                pid = kernel.spawn("a", caps=[f"net:GET {base}/*:fetch"])
                out = await kernel.call_tool(pid, "fetch", {"url": f"{base}/x"})
                assert out["body"] == "ok", out
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    print(len(seen), all(seen))

trio.run(main)
"""


def test_no_half_made_httpx_is_ever_seen_from_the_brokers_thread(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[3],
                          env=bare_env(LIBOS_AUDIT_KEY=str(tmp_path / "audit.key")))
    assert done.returncode == 0, done.stderr[-3000:]
    looks, whole = done.stdout.split()
    assert int(looks) > 0 and whole == "True"
