"""The soak (issue 20 item 7): one hostile process doing every flood at once beside 50
well-behaved processes, then the broker SIGKILLed mid-flood and the store checked.

`python -m bench.soak_bench [--seconds 60] [--baseline 15] [--workers 50] [--short]` (from a
source checkout: the loopback model comes from the tests) prints JSON: the workers' latency
(p50/p99/max, from when each step was due) alone (baseline) and beside the hostile (soak),
the broker's RSS before the soak and at each quarter, the store's growth (SQLite file with
its WAL, rows per table), what each flood ended in, the hostile's peak holdings, and the
checks of `soak_check` (every worker's work exactly once, the hostile bounded, the audit
chain verified by `libos audit --verify`). `--short` is the CI test's mode: a few seconds,
with the per-call syscall cap and deadline lowered and room for every flood at once, so that
each reaches its own bound within them (and on a loaded machine, going on until each flood
has ended once).

The broker runs in a child process (`soak_broker`); the model and the slow HTTP server the
hostile fetches from run here, outside it, like real ones. Here too the broker's live
children are sampled from /proc: `sleep` runs and Deno processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.soak_agents import HostileModel
from bench.soak_broker import KEY_ENV, SoakConfig
from bench.soak_check import check
from tests.broker.planner.replay import replay_server

ROOT = Path(__file__).resolve().parent.parent
# The CI test's mode: the per-call syscall cap and deadline lowered, and room for every flood
# at once, so that each reaches its own bound within seconds.
SHORT = {"seconds": 5.0, "baseline": 0.0, "approval_timeout": 3.0, "until_each_ended": True,
         "call_limits": {"deadline": 4.0, "max_syscalls": 500},
         "process_limits": {"sandboxes": 24}}


class SlowServer:
    """A loopback HTTP server answering each GET after 0.2 s; counts requests in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.most = self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.in_flight += 1
                    server.most = max(server.most, server.in_flight)
                time.sleep(0.2)
                with server.lock:
                    server.in_flight -= 1
                    server.served += 1
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]

    @contextmanager
    def serving(self) -> Iterator[SlowServer]:
        thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.http.shutdown()
            self.http.server_close()


class Children:
    """The broker's live children, sampled from /proc every 100 ms: most `sleep 0.2` runs
    (the hostile's shell fan-out) and most Deno processes at once."""

    def __init__(self, pid: int) -> None:
        self.pid, self.most = pid, {"shell": 0, "deno": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.1):
            now = {"shell": 0, "deno": 0}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if int(fields[1]) != self.pid or fields[0] == "Z":
                    continue
                if argv[0].endswith(b"sleep") and argv[1:2] == [b"0.2"]:
                    now["shell"] += 1
                elif argv[0].endswith(b"deno"):
                    now["deno"] += 1
            for key, value in now.items():
                self.most[key] = max(self.most[key], value)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.thread.join(5)
        return self.most


def _broker(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, KEY_ENV: "sk-soak",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "bench.soak_broker", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, text=True)


def _lines(child: subprocess.Popen[str], until: str, timeout: float) -> dict[str, Any]:
    """Read the child's JSON lines up to the one of kind `until`, which is returned."""
    assert child.stdout is not None
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    try:
        for line in child.stdout:
            if line.startswith("{"):
                out = json.loads(line)
                if out["kind"] == until:
                    return out
    finally:
        timer.cancel()
    raise RuntimeError(f"the soak's broker ended (status {child.wait()}) before {until!r}")


def soak(tmp: Path, *, seconds: float = 60.0, baseline: float = 15.0, workers: int = 50,
         crash: bool = True, **options: Any) -> dict[str, Any]:
    """Run the soak over a fresh store in `tmp`; returns its figures and checks."""
    requests: dict[str, int] = {}
    hostile_model = HostileModel()
    with replay_server([], hostile_model, keep_requests=False) as model, \
            SlowServer().serving() as slow:
        cfg = SoakConfig(db=str(tmp / "soak.db"), model_url=model.url, fetch_port=slow.port,
                         seconds=seconds, baseline=baseline, workers=workers, crash=crash,
                         **options)
        config = tmp / "soak.json"
        config.write_text(json.dumps(asdict(cfg)))
        child = _broker("run", str(config))
        children = Children(child.pid)
        patience = seconds + baseline + 300
        try:
            ready = _lines(child, "ready", 120)
            soaked = _lines(child, "soaked", patience)
            if crash:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                most = children.stop()
                child = _broker("finish", str(config), str(soaked["hostile"]))
            finished = _lines(child, "finished", 300)
            if not crash:
                most = children.stop()
            if child.wait(60) != 0:
                raise RuntimeError(f"the soak's broker failed (status {child.returncode})")
        finally:
            children.stop()
            if child.poll() is None:
                child.kill()
                child.wait()
        requests = {"model_requests": len(model.sizes), "model_told": dict(hostile_model.told),
                    "largest_model_request_bytes": max(model.sizes, default=0),
                    "fetches_served": slow.served, "most_fetches_at_once": slow.most}
    checks = check(cfg, soaked, finished, {**most, "fetches": requests["most_fetches_at_once"]})
    return {"config": {k: v for k, v in asdict(cfg).items() if k not in ("db", "model_url")},
            "load_before": os.getloadavg(), "ready_rss_mib": ready["rss_mib"],
            **{k: v for k, v in soaked.items() if k != "kind"},
            "finish": {k: v for k, v in finished.items() if k not in ("kind", "workers")},
            "most_children": most, **requests, "checks": checks}


def run(seconds: float = 60.0, baseline: float = 15.0, workers: int = 50,
        short: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = dict(SHORT) if short else {"seconds": seconds,
                                                         "baseline": baseline}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="libos-soak-") as tmp:
        figures = soak(Path(tmp), workers=workers, **options)
    figures["load_before"] = load
    figures["load_after"] = os.getloadavg()
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--short", action="store_true")
    a = parser.parse_args()
    print(json.dumps(run(a.seconds, a.baseline, a.workers, a.short), indent=2))
