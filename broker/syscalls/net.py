"""net: HTTP requests under capabilities that scope method, scheme, host, port and path.

Scope syntax (kind `net`, right `fetch`). The resource of a request is
`METHOD scheme://host:port/path?query`, canonical: upper-case method, lower-case host, the
port always spelled out, no credentials, no fragment. Scopes are the ordinary patterns:

* `GET https://api.example.com:443/v1/*` — GET anything under /v1/ of that host and port;
* `POST https://api.example.com:443/v1/upload` — exactly that request line;
* `GET https://*` — GET on any https host (public addresses only, see below).

Loopback, private, link-local and other non-public addresses are refused unless the
capability that allowed the request spells out the whole authority (host and port) with no
wildcard, e.g. `GET http://127.0.0.1:8080/*` or `GET http://localhost:8080/*`. The host is
resolved once, every address is classified, and the connection goes to a checked address.

Redirects are followed by hand (at most `max_redirects`), each hop as a request of its own:
the handler answers a redirect with a `FollowUp`, and the dispatcher runs the hop as another
`net.fetch` call (303, and 301/302 after POST, become GET; credentials headers are dropped
when the origin changes), through the same check, budget and audit as any call, its records
linked to the call it continues (`follows`). So a hop spends a use of a counted capability,
one that only an `ask` capability covers is put to a person, and one that no capability
allows is a `denied` record before it is sent, and `NotCapable` for the caller. The result's
`redirects` lists the hops followed (the broker fills in that argument on a hop).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from broker.caps import Decision, Proof
from broker.errors import InvalidArgument, LimitExceeded, NotCapable
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import FollowUp, syscall

# The provider (`broker.providers.net`) is imported by the functions that use it, at the
# first fetch: a broker that never fetches (the demo's) does not import it (~2.4 ms of CPU).
if TYPE_CHECKING:
    from broker.providers.net import Url

MAX_BODY = 8 << 20
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
REDIRECTS = (301, 302, 303, 307, 308)
CREDENTIAL_HEADERS = ("authorization", "cookie")


def _request(args: dict[str, Any]) -> tuple[str, Url, dict[str, str], bytes]:
    from broker.providers.net import FORBIDDEN_REQUEST_HEADERS, parse_url

    method = args.get("method", "GET")
    url = parse_url(args["url"])
    headers = args.get("headers", {})
    for name, value in headers.items():
        if not _TOKEN.match(name) or name.lower() in FORBIDDEN_REQUEST_HEADERS:
            raise InvalidArgument(f"net.fetch: request header {name[:64]!r} is not allowed")
        if any(c in value for c in "\r\n\x00") or not value.isascii():
            raise InvalidArgument(f"net.fetch: bad value for request header {name[:64]!r}")
    body = args.get("body", b"")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes | bytearray) or len(body) > MAX_BODY:
        raise InvalidArgument(f"net.fetch: body must be text or bytes, at most {MAX_BODY}")
    return method, url, dict(headers), bytes(body)


def _authorize(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    method, url, _, _ = _request(args)
    return ctx.check("net", "fetch", url.resource(method))


def _explicit(proof: Proof, url: Url, method: str) -> bool:
    # The scope of the capability the check found, as the check saw it (the capability may be
    # gone since: a counted one, spent by this very call).
    from broker.providers.net import names_authority

    return names_authority(proof.scope, url, method)


async def _address(ctx: SyscallContext, proof: Proof, url: Url, method: str) -> str:
    from broker.providers.net import is_public

    addresses = await ctx.services.net.resolve(url.host, url.port)
    for address in addresses:
        if not is_public(address) and not _explicit(proof, url, method):
            raise NotCapable(
                f"net.fetch: {url.host[:64]} resolves to the non-public address {address}; "
                f"only a capability naming {url.authority} itself may reach it",
                resource=url.resource(method))
    return addresses[0]


@syscall(
    "net.fetch",
    doc="HTTP(S) request: {url, method?, headers?, body?, timeout?, max_bytes?, binary?} → "
        "{status, headers, body, url, redirects}. Redirects are followed, each hop a call of "
        "its own, checked and audited (the broker fills in `redirects`, the hops so far).",
    args={
        "url": {"type": "string", "minLength": 1, "maxLength": 8192},
        "method": {"enum": list(METHODS)},
        "headers": {"type": "object", "maxProperties": 64,
                    "additionalProperties": {"type": "string", "maxLength": 8192}},
        "body": {},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "max_bytes": {"type": "integer", "minimum": 0},
        "binary": {"type": "boolean"},
        "follow_redirects": {"type": "boolean"},
        "redirects": {"type": "array", "maxItems": 64,
                      "items": {"type": "string", "maxLength": 8192}},
    },
    required=("url",),
    kind="net",
    right="fetch",
    authorize=_authorize,
    blocking=True,
)
async def net_fetch(ctx: SyscallContext, args: dict[str, Any],
                    proof: Proof) -> dict[str, Any] | FollowUp:
    from broker.providers.net import Exchange, parse_url

    net = ctx.services.net
    limits = net.limits
    method, url, headers, body = _request(args)
    timeout = args.get("timeout", limits.timeout)
    if timeout > limits.max_timeout:
        raise InvalidArgument(f"net.fetch: timeout over {limits.max_timeout} s")
    max_bytes = min(args.get("max_bytes", limits.max_bytes), limits.max_bytes)
    hops: list[str] = list(args.get("redirects", ()))
    address = await _address(ctx, proof, url, method)
    response = await net.exchange(proof, Exchange(
        method, url, address, headers, body, timeout=timeout, max_bytes=max_bytes))
    location = response["headers"].get("location")
    if (response["status"] in REDIRECTS and location is not None
            and args.get("follow_redirects", True)):
        if len(hops) >= limits.max_redirects:
            raise LimitExceeded(f"net.fetch: more than {limits.max_redirects} redirects")
        target = parse_url(location, base=url)
        hop = {k: v for k, v in args.items() if k != "body"}
        if response["status"] == 303 or (response["status"] in (301, 302) and method == "POST"):
            method, body = "GET", b""
        if (target.scheme, target.authority) != (url.scheme, url.authority):
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        hop.update(url=target.text, method=method, headers=headers, redirects=[*hops, target.text])
        if body:
            hop["body"] = body
        return FollowUp("net.fetch", hop, {"status": response["status"], "url": url.text,
                                           "location": target.text})
    data = response["body"]
    return {"status": response["status"], "headers": response["headers"],
            "body": data if args.get("binary") else data.decode(errors="replace"),
            "url": url.text, "redirects": hops}
