"""An external MCP server's tools as host tools of this kernel (`kernel.attach_mcp`).

Each tool the server lists becomes a host tool named `<prefix><tool>` (prefix: `<server>.`)
of the capability kind `mcp`, right `call`, on the resource `<server>/<tool>`: a process calls
it only under a capability such as `mcp:files/*:call` or `mcp:files/read:call`, and an `ask`
one puts the exact arguments to a person first. So each call is checked in the dispatcher's
check step, approved, budgeted and audited like any host tool (`host_tools.py`), within the
tool's deadline.

A server's list is hostile input. A tool whose name cannot be a libos tool name, whose input
schema the schema checker refuses (a remote `$ref`, a pattern RE2 cannot run, past the
budgets) or that clashes with a tool already registered is not registered: it is refused with
a `rejected` record of `host.register` naming the typed error, and the other tools are
registered as usual. The attachment, what it registered and what it refused are a
`mcp.attach` record; its end (the tools unregistered, the server stopped) is `mcp.detach`.
How a call fails when the server dies, hangs, or sends too much or nonsense is the peer's
(`broker.providers.mcp_peer`): always a typed error for the calling process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.caps.host_scope import NAME
from broker.errors import InvalidArgument, LibosError
from broker.kernel.faults import STORE_FAULTS, store_faults_typed
from broker.providers.mcp_peer import (
    CONNECT_DEADLINE,
    MAX_MESSAGE,
    McpPeer,
    McpServerSpec,
    connect,
)
from broker.store import AuditRecord

if TYPE_CHECKING:
    from broker.kernel.host_tools import HostTools
    from broker.store import SQLiteStore

KIND = "mcp"
RIGHT = "call"
ATTACH_RECORD = "mcp.attach"
DETACH_RECORD = "mcp.detach"


@dataclass
class McpAttachment:
    """A server attached to a kernel: the libos names of its tools, and those refused
    (server's tool name -> typed error code and message)."""

    name: str
    peer: McpPeer
    tools: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def _caller(peer: McpPeer, tool: str) -> Any:
    async def call(**args: Any) -> Any:
        return await peer.call(tool, args)

    call.__name__ = "mcp_call"
    return call


UNTRUSTED = ("untrusted",)  # the labels of another server's results, unless told


@asynccontextmanager
async def attach(store: SQLiteStore, host_tools: HostTools, name: str, *,
                 command: Sequence[str] = (), url: str | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 prefix: str | None = None, deadline: float | None = None,
                 max_message: int = MAX_MESSAGE,
                 connect_deadline: float = CONNECT_DEADLINE,
                 labels: Sequence[str] = UNTRUSTED) -> AsyncIterator[McpAttachment]:
    """Connect to the server, register its tools for as long as the block runs. Their results
    carry `labels` (`untrusted` unless told otherwise: what another server says is data from
    outside, which a capability's label bounds may keep from choosing an effect)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument("an MCP server's name is a lowercase name (a letter, then up to "
                              "31 of a-z 0-9 _ -)")
    spec = McpServerSpec(tuple(command), None if env is None else dict(env), cwd, url)
    prefix = f"{name}." if prefix is None else prefix
    attached: McpAttachment | None = None
    try:
        async with connect(name, spec, max_message=max_message,
                           connect_deadline=connect_deadline) as peer:
            attached = McpAttachment(name, peer)
            try:  # (a store that fails a record part way: a typed error, nothing left behind)
                with store_faults_typed:
                    for tool in peer.tools:
                        _register(host_tools, attached, prefix, tool, deadline, labels)
                    _audit(store, "admin", ATTACH_RECORD, name, {
                        "server": spec.shown(), "tools": attached.tools,
                        "refused": attached.refused})
            except BaseException:
                for registered in attached.tools:  # (out of memory even if not recorded so)
                    with suppress(*STORE_FAULTS):
                        host_tools.remove(registered)
                attached = None  # (not attached: the connection failed, on the record too)
                raise
            try:
                yield attached
            finally:
                for registered in attached.tools:
                    host_tools.remove(registered)
                _audit(store, "admin", DETACH_RECORD, name, {
                    "tools": attached.tools,
                    "broken": peer.broken.to_wire() if peer.broken else None})
    except LibosError as exc:
        if attached is None:  # the connection failed: on the record too
            with suppress(*STORE_FAULTS):  # (a store that cannot: the error is raised)
                _audit(store, "rejected", ATTACH_RECORD, name, {
                    "server": spec.shown(), "error": exc.code, "message": exc.message[:500]})
        raise


def _register(host_tools: HostTools, attached: McpAttachment, prefix: str, tool: Any,
              deadline: float | None, labels: Sequence[str]) -> None:
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
    try:
        host_tools.add(_caller(attached.peer, tool.name), kind=KIND, right=RIGHT,
                       resource=lambda args, r=f"{attached.name}/{tool.name}": r,
                       name=prefix + tool.name, description=tool.description or "",
                       schema=schema, deadline=deadline, labels=list(labels))
    except LibosError as exc:  # on the record already (`host.register`, rejected)
        attached.refused[tool.name[:128]] = f"{exc.code}: {exc.message[:300]}"
        return
    attached.tools.append(prefix + tool.name)


def _audit(store: SQLiteStore, phase: str, syscall: str, name: str,
           detail: dict[str, Any]) -> None:
    store.append_audit(AuditRecord(phase=phase, syscall=syscall, resource=name, detail=detail))
