"""What the model SDKs cost the broker's thread, through the real SDKs against the loopback
server. Their clients share TLS settings made once, off the broker's thread: an SDK left to
itself loads the CA bundle for every client, one per request, and that took 40-150 ms of the
broker's thread at every step of a model-driven process while every other process waited
(the soak in bench/soak_bench.py saw workers' steps wait over a second). And an SDK is
imported in a worker thread: the first import takes seconds of CPU (3-5 s under load), for
which every process stood still."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.planner import tls
from tests.broker.planner.replay import replay_server
from tests.broker.planner.replies import reply
from tests.broker.planner.test_chat import KINDS, settings
from tests.conftest import bare_env

pytest.importorskip("openai")
pytest.importorskip("anthropic")

STEPS = 8


@pytest.mark.parametrize("kind", KINDS)
async def test_the_ca_bundle_is_loaded_once_and_in_a_worker_thread(
        kernel: Kernel, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")
    monkeypatch.setattr(tls, "_context", None)  # as in a fresh broker process
    on_brokers_thread: list[bool] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        on_brokers_thread.append(threading.current_thread() is threading.main_thread())
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    replies = [reply(kind, f"step {n}", [(f"c{n}", "now", {})]) for n in range(STEPS)]
    with replay_server([*replies, reply(kind, "done")]) as api:
        await kernel.register_image(AgentImage(f"t-{kind}", tools=("now",),
                                               needs=("clock:*:read",),
                                               planner=settings(kind, api.url)))
        pid = kernel.spawn(f"t-{kind}", caps=["clock:*:read"], args="go")
        status = await kernel.wait(pid, timeout=60)
    assert (status["state"], status["result"]) == ("exited", "done")
    assert len(api.requests) == STEPS + 1
    assert on_brokers_thread == [False]  # once for all the requests, in a worker thread


IMPORTS = """
import json, sys, threading, trio
from broker import AgentImage, Kernel
from tests.broker.planner.replay import replay_server
from tests.broker.planner.replies import reply

kind, db, seen = sys.argv[1], sys.argv[2], []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == kind:
            seen.append(threading.current_thread() is threading.main_thread())


async def main():
    with replay_server([reply(kind, "", [("c1", "now", {})]), reply(kind, "done")]) as api:
        model = json.loads(sys.argv[3].replace("{port}", api.url.rsplit(":", 1)[1]))
        async with Kernel.open(db) as kernel:
            await kernel.register_image(AgentImage("t", tools=("now",), needs=("clock:*:read",),
                                                   planner=model))
            pid = kernel.spawn("t", caps=["clock:*:read"], args="go")
            print(json.dumps({"status": await kernel.wait(pid, timeout=60), "seen": seen}))

assert kind not in sys.modules
sys.meta_path.insert(0, Watch())
trio.run(main)
"""


@pytest.mark.parametrize("kind", KINDS)
def test_the_sdk_is_imported_off_the_brokers_thread(kind: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    model = settings(kind, "http://127.0.0.1:{port}")
    run = subprocess.run([sys.executable, "-c", IMPORTS, kind, str(tmp_path / "k.db"),
                          json.dumps(model)],
                         cwd=root, env=bare_env(PYTHONPATH=str(root), LIBOS_TEST_KEY="sk-test"),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert (out["status"]["state"], out["status"]["result"]) == ("exited", "done")
    assert out["seen"] == [False]  # imported once, in a worker thread
