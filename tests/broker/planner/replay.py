"""A model API on loopback that replays a recorded conversation: each POST gets the next
recorded response (or what `responder(n, request)` makes for the n-th request; bytes are
sent as they are); every request the SDK sent is kept for the test to inspect."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


Responder = Callable[[int, dict[str, Any]], Any]


@dataclass
class Replay:
    responses: list[Any]
    url: str = ""
    responder: Responder | None = None
    keep_requests: bool = True  # False: keep only their sizes (long runs)
    sizes: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hold: int | None = None  # the request with this index gets no answer until `release`
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


def load(name: str) -> list[dict[str, Any]]:
    return [exchange["response"] for exchange in
            json.loads((FIXTURES / name).read_text(encoding="utf-8"))["exchanges"]]


@contextmanager
def replay_server(responses: list[Any], responder: Responder | None = None,
                  keep_requests: bool = True) -> Iterator[Replay]:
    replay = Replay(list(responses), responder=responder, keep_requests=keep_requests)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["content-length"]))
            body = json.loads(raw)
            with lock:
                n = len(replay.sizes)
                held = n == replay.hold
                replay.sizes.append(len(raw))
                if replay.keep_requests:
                    replay.requests.append(body)
                    replay.paths.append(self.path)
                    replay.headers.append({k.lower(): v for k, v in self.headers.items()})
                if held:
                    out = None
                elif replay.responder is not None:
                    out = replay.responder(n, body)
                else:
                    out = replay.responses.pop(0) if replay.responses else None
            if held:  # a request cut off (its client is gone by the time it is released)
                replay.released.wait(30)
                self.close_connection = True
                return
            status = 200 if out is not None else 500
            data = out if isinstance(out, bytes) else json.dumps(out if out is not None else {
                "error": {"type": "replay", "message": "no recorded response left"}}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    replay.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield replay
    finally:
        replay.release()
        server.shutdown()
        server.server_close()
        thread.join(5)
