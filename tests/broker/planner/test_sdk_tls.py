"""The model SDKs' clients share TLS settings made once, off the broker's thread: an SDK left
to itself loads the CA bundle for every client, one per request, and that took 40-150 ms of
the broker's thread at every step of a model-driven process while every other process
waited (the soak in bench/soak_bench.py saw workers' steps wait over a second). Through the
real SDKs, against the loopback server."""

from __future__ import annotations

import ssl
import threading
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.planner import tls
from tests.broker.planner.replay import replay_server
from tests.broker.planner.replies import reply
from tests.broker.planner.test_chat import KINDS, settings

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
