"""The approval web page: a small ASGI app on loopback, served by hypercorn (trio).

It lists pending requests and questions with approve/deny buttons (and an answer field for
questions), each with its process's image and its deadline; new requests appear without a
reload (its one script polls `/rows`, see `web_script`). Everything a tool wrote is shown
inert (the one rule of `broker.inert`, then HTML escaped; see `web_rows`) and whole: the
arguments of a request, however long, are in a scrollable box with the hash that "once"
binds to; nothing is cut. "Approve always" takes a scope the person picks among those the
broker's rule allows (never wider than the asking capability's); the answer is checked again
by the kernel or the store whatever a POST carries. Each form carries the digest of the
request as shown (`digest`); an answer is written, and signed, only over a request that still
gives it (else `Conflict`: it changed since it was shown, look again), so a database writer's
edit between the page and the click is never signed. The page says only its own words: the
status line after an answer is one of a fixed set. The Content-Security-Policy allows only
the page's own script and its own requests. Every POST carries a CSRF token (random per
server, compared in constant time), must come from this page's own origin, and must name
this server as its Host (no DNS rebinding from a web page elsewhere). Every path it serves
lies under a random secret printed with its address (`http://127.0.0.1:PORT/SECRET/`; the
page's links are relative to it): the port is any local user's to reach, and the page, its
token with it, was any local user's to read and answer, signed with this user's key.

The page talks to an `ApprovalApi`: the kernel itself (`Kernel.approvals/approve/deny/answer`)
or `StoreApprovals` over a store another broker owns (the answer is written into the pending
row; that broker audits and applies it).
"""

from __future__ import annotations

import errno
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

import trio

from broker.errors import Conflict, InvalidArgument, LibosError
from broker.json_text import answer_value
from broker.providers.web_rows import DONE, inert, page, rows
from broker.providers.web_script import SCRIPT

MAX_FORM = 64 << 10
STATUS = {"NOT_FOUND": 404, "CONFLICT": 409, "INVALID_ARGUMENT": 400, "NOT_CAPABLE": 403}
STANDING = ("always", "deny-always")  # the answers that take a scope

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ApprovalApi(Protocol):
    def approvals(self, state: str | None = "pending") -> list[dict[str, Any]]: ...
    def approve(self, approval_id: str, always: bool = False, *, scope: str | None = None,
                who: str = "api", shown: str | None = None) -> dict[str, Any]: ...
    def deny(self, approval_id: str, always: bool = False, *, scope: str | None = None,
             who: str = "api", shown: str | None = None) -> dict[str, Any]: ...
    def answer(self, approval_id: str, value: Any, *, who: str = "api",
               shown: str | None = None) -> dict[str, Any]: ...


class ApprovalPage:
    """The ASGI application."""

    def __init__(self, api: ApprovalApi, *, who: str = "web") -> None:
        self.api = api
        self.who = who
        self.csrf = secrets.token_urlsafe(32)
        self.root = f"/{secrets.token_urlsafe(24)}/"  # the page's address: whoever holds it
        self.hosts: set[str] = set()  # filled in when the port is known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        if self.hosts and headers.get("host") not in self.hosts:
            await _respond(send, 421, "<p>Wrong host.</p>")
            return
        method, path = scope["method"], self.below_root(scope["path"])
        if path is None:
            await _respond(send, 404, "<p>Not found.</p>")
        elif method == "GET" and path == "":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            await _respond(send, 200, self.render(DONE.get(query.get("msg", [""])[0], "")))
        elif method == "GET" and path == "rows":  # the fragment the script adds rows from
            await _respond(send, 200, rows(self.api.approvals(), self.csrf), fragment=True)
        elif method == "GET" and path == "page.js":
            await _respond(send, 200, SCRIPT, content_type=b"text/javascript; charset=utf-8")
        elif method == "POST" and path == "answer":
            await self.post(scope, headers, receive, send)
        else:
            await _respond(send, 404, "<p>Not found.</p>")

    def below_root(self, path: str) -> str | None:
        """`path` past the page's secret root, or None where it does not start with it
        (compared in constant time: the secret is the page's only lock against this host)."""
        head = path[:len(self.root)].encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(head, self.root.encode()):
            return None
        return path[len(self.root):]

    async def post(self, scope: Scope, headers: dict[str, str], receive: Receive,
                   send: Send) -> None:
        origin = headers.get("origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.hosts}:
            await _respond(send, 403, "<p>Cross-origin request refused.</p>")
            return
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            await _respond(send, 415, "<p>Form posts only.</p>")
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if len(body) > MAX_FORM:
                await _respond(send, 413, "<p>Too large.</p>")
                return
            if not event.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        if not secrets.compare_digest(form.get("csrf", ""), self.csrf):
            await _respond(send, 403, "<p>Missing or wrong CSRF token.</p>")
            return
        request_id, action = form.get("id", ""), form.get("action", "")
        # Only a standing answer takes the scope the person chose; the kernel (or the store's
        # answer rule) refuses one wider than the asking capability, and audits the refusal.
        chosen = (form.get("scope") or None) if action in STANDING else None
        shown = form.get("digest", "")  # the request as the page showed it
        try:
            if not shown:
                raise InvalidArgument("the answer does not say which request it saw (no"
                                      " digest): reload the page")
            if action in ("once", "always"):
                self.api.approve(request_id, always=action == "always", scope=chosen,
                                 who=self.who, shown=shown)
            elif action in ("deny", "deny-always"):
                self.api.deny(request_id, always=action == "deny-always", scope=chosen,
                              who=self.who, shown=shown)
            elif action == "answer":
                self.api.answer(request_id, answer_value(form.get("value", "")), who=self.who,
                                shown=shown)
            else:
                await _respond(send, 400, "<p>Unknown action.</p>")
                return
        except LibosError as exc:
            await _respond(send, STATUS.get(exc.code, 400),
                           f"<p>{inert(exc.code)}: {inert(exc.message)}</p>"
                           '<p><a href="./">back</a></p>')
            return
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", f"{self.root}?msg={action}".encode()),
                                *_SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": b""})

    def render(self, message: str = "") -> str:
        """The page; `message` is one of `DONE`'s own sentences (or nothing)."""
        return page(self.api.approvals(), self.csrf, message)


_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; connect-src 'self'; "
     b"style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
     b"base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" would send Origin: null
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
]


async def _respond(send: Send, status: int, body: str, *, fragment: bool = False,
                   content_type: bytes = b"text/html; charset=utf-8") -> None:
    whole = fragment or not content_type.startswith(b"text/html") or body.startswith(
        "<!doctype")
    data = body.encode() if whole else (
        "<!doctype html><meta charset=utf-8><title>libos</title>" + body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *_SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": data})


async def serve(api: ApprovalApi, *, port: int = 0, who: str = "web",
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the page on 127.0.0.1 until cancelled; `task_status.started(url)`, the
    page's address, its secret root included."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(f"port {port} on 127.0.0.1 is in use: stop what serves it, or "
                           "choose another port (--port N, or 0 for any free one)") from None
        raise InvalidArgument(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from None
    actual = sock.getsockname()[1]
    app = ApprovalPage(api, who=who)
    app.hosts = {f"127.0.0.1:{actual}", f"localhost:{actual}"}
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the descriptor from here
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(hypercorn_serve, app, config)
        task_status.started(f"http://127.0.0.1:{actual}{app.root}")
