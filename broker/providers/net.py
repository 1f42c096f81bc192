"""The HTTP provider: URL canonicalisation, resolution with address classes, and one bounded
HTTP exchange (httpx) with a checked address.

What reaches `exchange` has been checked by `net.fetch`: the URL's canonical resource against
a capability, and every address the host resolved to. The connection goes to that checked
address (never a second lookup, so DNS rebinding cannot swap it), with the original host in
the Host header and as the TLS server name. No proxies from the environment, no automatic
redirects (the syscall re-checks each hop), no content decoding (`Accept-Encoding: identity`:
no decompression bombs), and caps on time, body bytes, header count and header size.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import trio

from broker.caps import Proof, require_proof
from broker.errors import InvalidArgument, LimitExceeded, NotFound

if TYPE_CHECKING:
    import httpx

MAX_URL = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_NUMERIC_ISH = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$")
_PATH_OK = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_ODD_ESCAPES = re.compile(r"%(2e|2f|5c|00|25)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
FORBIDDEN_REQUEST_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "keep-alive", "proxy-authorization", "proxy-connection", "accept-encoding", "expect"})


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int
    path: str  # path plus "?query", never empty ("/")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"

    def resource(self, method: str) -> str:
        """What a `net:fetch` capability scopes: `METHOD scheme://host:port/path?query`."""
        return f"{method} {self.text}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_url(raw: object, base: Url | None = None) -> Url:
    """A canonical URL, or `InvalidArgument` for anything odd: credentials, non-ASCII,
    whitespace or control characters, backslashes, numeric-ish hosts that are not plain
    dotted quads, encoded dots/slashes/NULs, dot segments, fragments of other schemes."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL:
        raise InvalidArgument("a URL must be a string of 1 to 8192 characters")
    if not raw.isascii() or any(c <= " " or c == "\x7f" for c in raw) or "\\" in raw:
        raise InvalidArgument("the URL has non-ASCII, whitespace, control or backslash "
                              "characters")
    if base is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", raw):
        if raw.startswith("//"):
            raw = f"{base.scheme}:{raw}"
        elif raw.startswith("?"):
            raw = f"{base.scheme}://{base.authority}{base.path.split('?', 1)[0]}{raw}"
        elif raw.startswith("/"):
            raw = f"{base.scheme}://{base.authority}{raw}"
        else:
            directory = base.path.split("?", 1)[0].rsplit("/", 1)[0]
            raw = f"{base.scheme}://{base.authority}{directory}/{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidArgument(f"URL scheme {scheme[:16]!r} is not http or https")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise InvalidArgument("URLs with credentials are refused")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument("the URL has no host")
    if "%" in parts.netloc:
        raise InvalidArgument("percent-encoding in the host is refused")
    if parts.netloc.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise InvalidArgument("malformed IPv6 literal") from None
    elif _NUMERIC_ISH.match(host):
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidArgument(f"odd numeric host {host[:64]!r}: use a dotted quad") from None
        if host != (parts.hostname or ""):
            raise InvalidArgument("odd numeric host")
    elif not _HOSTNAME.match(host):
        raise InvalidArgument(f"malformed host {host[:64]!r}")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidArgument("port out of range")
    path = parts.path or "/"
    if not _PATH_OK.match(path) or not _PATH_OK.match(parts.query):
        raise InvalidArgument("the URL path or query has characters that must be encoded")
    if _ODD_ESCAPES.search(path) or _BAD_ESCAPE.search(path) or _BAD_ESCAPE.search(parts.query):
        raise InvalidArgument("encoded dots, slashes, backslashes, NULs or percent signs in "
                              "the path are refused")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise InvalidArgument("dot segments in the path are refused")
    if parts.query:
        path += "?" + parts.query
    return Url(scheme, host, port or DEFAULT_PORTS[scheme], path)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def names_authority(scope: str, url: Url, method: str) -> bool:
    """Does a capability scope spell out this URL's whole authority (host and port) with no
    wildcard? Only such a capability may reach loopback and private addresses."""
    prefix = f"{method} {url.scheme}://{url.authority}"
    star = scope.find("*")
    literal = scope if star < 0 else scope[:star]
    return literal == prefix or literal.startswith(prefix + "/") or literal.startswith(
        prefix + "?")


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise NotFound(f"cannot resolve {host[:64]!r}: {exc.strerror or exc}") from None
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True, slots=True)
class NetLimits:
    timeout: float = 30.0
    max_timeout: float = 300.0
    max_bytes: int = 8 << 20
    max_headers: int = 100
    max_header_bytes: int = 32 << 10
    max_redirects: int = 5
    max_request_body: int = 8 << 20


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    url: Url
    address: str  # the checked address to connect to
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    timeout: float = 30.0
    max_bytes: int = 8 << 20


class NetProvider(Protocol):
    limits: NetLimits

    async def resolve(self, host: str, port: int) -> list[str]: ...
    async def exchange(self, proof: Proof, request: Exchange) -> dict[str, Any]: ...


class HttpxNet:
    def __init__(self, limits: NetLimits | None = None, *, resolver: Resolver | None = None,
                 verify: Any = True) -> None:
        self.limits = limits or NetLimits()
        self._resolver = resolver or system_resolver
        self._verify = verify
        self._tls: ssl.SSLContext | None = None
        self._tls_made = trio.Lock()

    async def _tls_context(self) -> ssl.SSLContext:
        """The TLS settings, made once and in a worker thread: loading the CA bundle takes
        tens of milliseconds of CPU, which made per request (a client each) held the
        broker's thread for seconds when one tool fetched 100 URLs."""
        async with self._tls_made:
            if self._tls is None:
                self._tls = await trio.to_thread.run_sync(partial(_tls, self._verify))
        return self._tls

    async def resolve(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        addresses = await self._resolver(host, port)
        if not addresses:
            raise NotFound(f"{host[:64]!r} resolves to no address")
        return addresses

    async def exchange(self, proof: Proof, request: Exchange) -> dict[str, Any]:
        checked = require_proof(proof, Proof)
        url = request.url
        if checked.kind != "net" or checked.resource != url.resource(request.method):
            raise TypeError("the proof does not name this request")
        ip = request.address
        target = f"{url.scheme}://{f'[{ip}]' if ':' in ip else ip}:{url.port}{url.path}"
        headers = {**request.headers, "Host": url.host_header, "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        limits = self.limits
        # httpx is imported here, on the broker's thread, once a fetch is made (not by `import
        # broker`: with its command line's imports it was a quarter of it). Never in a worker
        # thread: the half-made module would sit in sys.modules meanwhile, where code on this
        # thread (the OpenAI SDK looks for it there) found it and failed.
        import httpx

        tls = await self._tls_context()

        try:
            with trio.fail_after(request.timeout):
                async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                             verify=tls, timeout=None) as client:
                    req = client.build_request(request.method, target, headers=headers,
                                               content=request.body or None,
                                               extensions=extensions)
                    response = await client.send(req, stream=True)
                    try:
                        head = _headers(response, limits)
                        body = bytearray()
                        async for chunk in response.aiter_raw():
                            body += chunk
                            if len(body) > request.max_bytes:
                                raise LimitExceeded(
                                    f"net.fetch: response over {request.max_bytes} bytes")
                    finally:
                        await response.aclose()
        except trio.TooSlowError:
            raise LimitExceeded(f"net.fetch: no complete response in {request.timeout} s"
                                ) from None
        except httpx.TransportError as exc:
            raise InvalidArgument(f"net.fetch: {type(exc).__name__}: {str(exc)[:200]}"
                                  ) from None
        return {"status": response.status_code, "headers": head, "body": bytes(body)}


def _tls(verify: Any) -> ssl.SSLContext:
    import httpx  # (imported already, on the broker's thread: see `fetch`)

    return httpx.create_ssl_context(verify=verify, trust_env=False)


def _headers(response: httpx.Response, limits: NetLimits) -> dict[str, str]:
    """Response headers as a plain map, bounded, with anything that could steer a reader
    (control characters, non-ASCII) escaped."""
    raw = response.headers.raw
    if len(raw) > limits.max_headers:
        raise LimitExceeded(f"net.fetch: more than {limits.max_headers} response headers")
    if sum(len(k) + len(v) for k, v in raw) > limits.max_header_bytes:
        raise LimitExceeded(f"net.fetch: response headers over {limits.max_header_bytes} bytes")
    out: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        text = "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out
