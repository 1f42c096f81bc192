"""net.fetch against real HTTP servers on 127.0.0.1: scopes by method, scheme, host, port and
path; loopback only where a capability names it; redirects re-checked; caps on size and time;
bad URLs and hostile responses typed and audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel, LimitExceeded, NotCapable, NotFound
from broker.providers.net import HttpxNet, NetLimits
from tests.conftest import ALL_BUILTINS, open_image

Route = Callable[[dict[str, Any]], Awaitable[bytes] | bytes]


def response(status: int = 200, body: bytes = b"ok", headers: list[tuple[str, str]] = (),
             reason: str = "OK") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}",
            "Connection: close", *[f"{k}: {v}" for k, v in headers]]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Server:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", 0))
            while len(rest) < length:
                rest += await stream.receive_some(65536)
            request = {"method": method, "target": target, "headers": headers, "body": rest}
            self.requests.append(request)
            route = self.routes.get(target.split("?")[0])
            out = route(request) if route else response(404, b"nope")
            if not isinstance(out, bytes):
                out = await out
            await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    srv = Server()
    listeners = await nursery.start(partial(trio.serve_tcp, srv.handle, 0, host="127.0.0.1"))
    srv.port = listeners[0].socket.getsockname()[1]
    return srv


NEEDS = ("net:*:fetch",)


async def _proc(kernel: Kernel, *caps: str) -> int:
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "fetch"))
    return kernel.spawn("agent", caps=list(caps))


async def fetch(kernel: Kernel, pid: int, url: str, **args: Any) -> dict[str, Any]:
    return await kernel.call_tool(pid, "fetch", {"url": url, **args})


async def test_a_get_under_a_scope_naming_the_loopback_authority(kernel: Kernel,
                                                                 server: Server) -> None:
    server.routes["/v1/hello"] = lambda r: response(body=b"hi there",
                                                    headers=[("X-Thing", "1")])
    pid = await _proc(kernel, f"net:GET {server.base}/v1/*:fetch")
    out = await fetch(kernel, pid, f"{server.base}/v1/hello?x=1")
    assert out["status"] == 200 and out["body"] == "hi there"
    assert out["headers"]["x-thing"] == "1" and out["redirects"] == []
    sent = server.requests[0]
    assert sent["headers"]["host"] == f"127.0.0.1:{server.port}"
    assert sent["headers"]["accept-encoding"] == "identity"
    intent = [r for r in kernel.audit(pid) if r["syscall"] == "net.fetch"
              and r["phase"] == "intent"]
    assert intent[0]["resource"] == f"GET {server.base}/v1/hello?x=1"


async def test_scope_by_method_path_port_and_scheme(kernel: Kernel, server: Server) -> None:
    server.routes["/v1/a"] = lambda r: response(body=r["body"] or b"got")
    pid = await _proc(kernel, f"net:GET {server.base}/v1/*:fetch",
                      f"net:POST {server.base}/v1/a:fetch")
    assert (await fetch(kernel, pid, f"{server.base}/v1/a", method="POST",
                        body="payload"))["body"] == "payload"
    for url, method in ((f"{server.base}/v2/a", "GET"), (f"{server.base}/v1/b", "POST"),
                        (f"{server.base}/v1/a", "PUT"),
                        (f"http://127.0.0.1:{server.port + 1}/v1/a", "GET"),
                        (f"https://127.0.0.1:{server.port}/v1/a", "GET")):
        with pytest.raises(NotCapable):
            await fetch(kernel, pid, url, method=method)
    assert len(server.requests) == 1


async def test_loopback_is_refused_unless_a_capability_names_it(kernel: Kernel,
                                                               server: Server) -> None:
    server.routes["/"] = lambda r: response()
    for scope in ("GET http://*", "*", "GET http://127.0.0.1:*", "GET http://127.*"):
        pid = await _proc(kernel, f"net:{scope}:fetch")
        with pytest.raises(NotCapable, match="non-public"):
            await fetch(kernel, pid, f"{server.base}/")
    assert server.requests == []
    pid = await _proc(kernel, f"net:GET http://localhost:{server.port}/*:fetch")
    assert (await fetch(kernel, pid, f"http://localhost:{server.port}/"))["status"] == 200


async def test_the_connection_goes_to_the_checked_address(db_path: Any,
                                                          server: Server) -> None:
    """A name is resolved once and the checked address is what is dialled (no second lookup
    for a rebinding DNS server to answer differently)."""
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.9.9.9"]

    server.routes["/x"] = lambda r: response(body=b"local")
    async with Kernel.open(db_path, net=HttpxNet(resolver=rebinding)) as kernel:
        pid = await _proc(kernel, f"net:GET http://app.test:{server.port}/*:fetch",
                          "net:GET http://*:fetch")
        out = await fetch(kernel, pid, f"http://app.test:{server.port}/x")
        assert out["body"] == "local" and lookups == ["app.test"]
        assert server.requests[0]["headers"]["host"] == f"app.test:{server.port}"
        # A wildcard capability never reaches a private address, however it resolves.
        with pytest.raises(NotCapable):
            await fetch(kernel, pid, "http://other.test/x")


async def test_redirects_are_rechecked(kernel: Kernel, server: Server) -> None:
    base = server.base
    server.routes["/v1/go"] = lambda r: response(302, b"", [("Location", "/v1/there")])
    server.routes["/v1/there"] = lambda r: response(body=b"arrived")
    server.routes["/v1/secret"] = lambda r: response(302, b"", [("Location", "/admin/keys")])
    server.routes["/v1/far"] = lambda r: response(
        301, b"", [("Location", f"http://127.0.0.1:{server.port + 1}/v1/x")])
    server.routes["/v1/loop"] = lambda r: response(302, b"", [("Location", "/v1/loop")])
    server.routes["/v1/creds"] = lambda r: response(
        302, b"", [("Location", f"http://user:pw@127.0.0.1:{server.port}/v1/there")])
    server.routes["/v1/file"] = lambda r: response(302, b"", [("Location", "file:///etc/passwd")])
    server.routes["/v1/post"] = lambda r: response(303, b"", [("Location", "/v1/there")])
    server.routes["/admin/keys"] = lambda r: response(body=b"KEYS")
    pid = await _proc(kernel, f"net:GET {base}/v1/*:fetch", f"net:POST {base}/v1/post:fetch")
    out = await fetch(kernel, pid, f"{base}/v1/go")
    assert out["body"] == "arrived" and out["redirects"] == [f"{base}/v1/there"]
    out = await fetch(kernel, pid, f"{base}/v1/post", method="POST", body="x")
    assert out["body"] == "arrived" and server.requests[-1]["method"] == "GET"
    for path, error in (("/v1/secret", NotCapable), ("/v1/far", NotCapable),
                        ("/v1/loop", LimitExceeded), ("/v1/creds", InvalidArgument),
                        ("/v1/file", InvalidArgument)):
        with pytest.raises(error):
            await fetch(kernel, pid, f"{base}{path}")
    assert not any(r["target"] == "/admin/keys" for r in server.requests)
    assert (await fetch(kernel, pid, f"{base}/v1/go", follow_redirects=False))["status"] == 302


@pytest.mark.parametrize("url", [
    "http://user:pw@127.0.0.1:{port}/v1/a",
    "http://127.0.0.1:{port}/v1/%2e%2e/admin",
    "http://127.0.0.1:{port}/v1/..%2fadmin",
    "http://127.0.0.1:{port}/v1/../admin",
    "http://127.0.0.1:{port}/v1/a%00",
    "http://0x7f.0.0.1:{port}/v1/a",
    "http://2130706433:{port}/v1/a",
    "http://127.0.0.01:{port}/v1/a",
    "http://127.0.0.1:{port}\\v1\\a",
    "http://exämple.com/v1/a",
    "http://127.0.0.1:{port}/v1/a b",
    "http://%31%32%37.0.0.1:{port}/v1/a",
    "ftp://127.0.0.1:{port}/v1/a",
    "//127.0.0.1:{port}/v1/a",
    "http://127.0.0.1:99999/v1/a",
])
async def test_odd_urls_are_typed_audited_and_not_sent(kernel: Kernel, server: Server,
                                                       url: str) -> None:
    pid = await _proc(kernel, "net:*:fetch")
    before = len(kernel.audit(pid))
    with pytest.raises(InvalidArgument):
        await fetch(kernel, pid, url.format(port=server.port))
    records = kernel.audit(pid)[before:]
    assert any(r["syscall"] == "net.fetch" and r["phase"] == "rejected" for r in records)
    assert server.requests == []


async def test_bad_request_headers(kernel: Kernel, server: Server) -> None:
    pid = await _proc(kernel, f"net:GET {server.base}/*:fetch")
    for headers in ({"Host": "evil"}, {"X-A": "1\r\nX-B: 2"}, {"Bad Name": "x"},
                    {"Transfer-Encoding": "chunked"}):
        with pytest.raises(InvalidArgument):
            await fetch(kernel, pid, f"{server.base}/", headers=headers)
    assert server.requests == []


async def test_response_size_and_time_are_capped(kernel: Kernel, server: Server) -> None:
    server.routes["/big"] = lambda r: response(body=b"x" * 100_000)

    async def slow(r: dict[str, Any]) -> bytes:
        await trio.sleep(5)
        return response()

    server.routes["/slow"] = slow
    pid = await _proc(kernel, f"net:GET {server.base}/*:fetch")
    with pytest.raises(LimitExceeded):
        await fetch(kernel, pid, f"{server.base}/big", max_bytes=1000)
    assert len((await fetch(kernel, pid, f"{server.base}/big"))["body"]) == 100_000
    with trio.fail_after(3), pytest.raises(LimitExceeded):
        await fetch(kernel, pid, f"{server.base}/slow", timeout=0.3)


async def test_hostile_response_headers(db_path: Any, server: Server) -> None:
    many = [(f"X-{i}", "v") for i in range(500)]
    server.routes["/many"] = lambda r: response(headers=many)
    server.routes["/huge"] = lambda r: response(headers=[("X-Huge", "a" * 40_000)])
    server.routes["/escape"] = lambda r: response(headers=[("X-Term", "\x1b[2Jhi\x7f")])
    server.routes["/split"] = lambda r: b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n"
    server.routes["/garbage"] = lambda r: b"\x00\x01 not http at all\r\n\r\n"
    server.routes["/lying"] = lambda r: (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"
                                         b"Content-Length: 20\r\n\r\n0123456789")
    server.routes["/gzipbomb"] = lambda r: response(
        body=b"\x1f\x8b" + b"\x00" * 100, headers=[("Content-Encoding", "gzip")])
    async with Kernel.open(db_path, net=HttpxNet(NetLimits(max_headers=100))) as kernel:
        pid = await _proc(kernel, f"net:GET {server.base}/*:fetch")
        for path, error in (("/many", LimitExceeded), ("/huge", LimitExceeded),
                            ("/split", InvalidArgument), ("/garbage", InvalidArgument),
                            ("/lying", InvalidArgument)):
            with pytest.raises(error):
                await fetch(kernel, pid, f"{server.base}{path}")
        out = await fetch(kernel, pid, f"{server.base}/escape")
        assert "\x1b" not in out["headers"]["x-term"] and "\\x1b" in out["headers"]["x-term"]
        raw = await fetch(kernel, pid, f"{server.base}/gzipbomb", binary=True)
        assert raw["body"] == b"\x1f\x8b" + b"\x00" * 100  # never decompressed
        assert kernel.verify_audit()[1] == []


async def test_unresolvable_hosts(kernel: Kernel) -> None:
    pid = await _proc(kernel, "net:GET http://*:fetch")
    with pytest.raises(NotFound):
        await fetch(kernel, pid, "http://no-such-host.invalid/")


def _certificate(tmp_path: Any, name: str) -> tuple[str, str]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return str(key), str(cert)


async def test_https_dials_the_checked_address_and_verifies_the_name(
        db_path: Any, tmp_path: Any, nursery: trio.Nursery) -> None:
    import ssl

    key, cert = _certificate(tmp_path, "app.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = Server()
    srv.routes["/x"] = lambda r: response(body=b"secure")
    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, srv.handle, 0, server_ctx,
                                            host="127.0.0.1"))
    port = listeners[0].transport_listener.socket.getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=cert)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with Kernel.open(db_path, net=HttpxNet(resolver=resolver, verify=client_ctx)
                           ) as kernel:
        pid = await _proc(kernel, f"net:GET https://app.test:{port}/*:fetch",
                          f"net:GET https://other.test:{port}/*:fetch")
        out = await fetch(kernel, pid, f"https://app.test:{port}/x")
        assert out["body"] == "secure" and srv.requests[0]["headers"]["host"] == \
            f"app.test:{port}"
        # The same address under another name: the certificate does not match it.
        with pytest.raises(InvalidArgument):
            await fetch(kernel, pid, f"https://other.test:{port}/x")


async def test_tls_settings_are_made_once_and_off_the_brokers_thread(
        kernel: Kernel, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle takes tens of milliseconds of CPU. Made per request (an httpx
    client each), a tool fetching 100 URLs held the broker's thread for seconds, and other
    processes waited (the soak in bench/soak_bench.py saw 3 s). It is made once, in a worker
    thread; every fetch still works."""
    import ssl
    import threading

    loads: list[bool] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(threading.current_thread() is threading.main_thread())
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    server.routes["/x"] = lambda r: response(body=b"x")
    pid = await _proc(kernel, f"net:GET {server.base}/*:fetch")
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(fetch, kernel, pid, f"{server.base}/x")
    assert len(server.requests) == 20
    assert loads == [False]  # once, in a worker thread
