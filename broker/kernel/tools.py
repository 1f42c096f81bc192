"""The tool table: which tools a process can call, and how one runs.

A process's tools come from its image (builtins and this kernel's host tools by name,
sandboxed code prepared when the image is registered) and from `tool.register` at run time.
A host tool (`host_tools.py`) runs through the dispatcher under its own capability, with a
record of its own, exactly like a syscall; its table entry is looked up live, so a tool
registered after a process was loaded is found, and one no longer registered is `NotFound`.

A tool is a libc-like wrapper: whatever language it is written in, every effect it has goes
through `KernelHost`, which is bound to one process and one invocation and sends each syscall
to the dispatcher. Builtin tools (`builtin_tools`) are Python functions over the same host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Container, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from broker.caps import CapSpec
from broker.errors import Conflict, InvalidArgument, LimitExceeded, NotFound
from broker.json_text import encoder
from broker.kernel.builtin_tools import BUILTINS, builtin_spec
from broker.kernel.faults import STORE_FAULTS, store_conflict
from broker.kernel.invocation import Invocation, authority_of
from broker.kernel.tool_plans import ToolPlan, plan_of
from broker.lru import Lru
from broker.schema import Schema, compile_schema
from broker.store.audit import AuditRecord
from broker.store.vouch import REGISTER, SPEC_HASH, TAKEN_BACK, Tampered, spec_digest
from broker.syscalls import TABLE
from sandboxes.base import CallLimits, SyscallHost, ToolCode

if TYPE_CHECKING:
    from broker.kernel.held_call import HeldCall
    from broker.kernel.image import AgentImage
    from broker.kernel.image_making import Manifests
    from broker.kernel.ports import Dispatch, ToolTableNeeds
    from broker.kernel.process import AgentProcess
    from broker.store.interface import Withdrawable
    from broker.syscalls.context import SyscallContext

log = logging.getLogger("libos.kernel")

MAX_TOOL_DEPTH = 8
MAX_TOOL_SOURCE = 1 << 20
MAX_LOG_TEXT = 4096
# Tools' code kept in memory (a miss reads the store): a model can register many large tools.
MAX_CACHED_SOURCES, MAX_CACHED_SOURCE_BYTES = 4096, 64 << 20
MAX_VALIDATORS = 4096  # tools' schemas kept compiled, and their code's characters in all
MAX_VALIDATOR_CODE_CHARS = 32 << 20
# A host tool in a process's table: its description and schema are the registration's, read
# live (`ToolTable._live`).
HOST_ENTRY: dict[str, Any] = {"lang": "host", "description": "", "schema": {"type": "object"},
                              "manifest": None, "hash": None}


class KernelHost:
    """`SyscallHost` for one invocation of one process: identity is this object, never what
    the tool writes."""

    __slots__ = ("_dispatcher", "_inv", "_proc", "_tools", "authority", "pid", "tool")

    def __init__(self, dispatcher: Dispatch, tools: ToolTable, proc: AgentProcess,
                 inv: Invocation, authority: str) -> None:
        self._dispatcher = dispatcher
        self._tools = tools
        self._proc = proc
        self._inv = inv
        self.pid = proc.pid
        self.tool = inv.tool
        self.authority = authority

    @property
    def invocation_id(self) -> int:
        return self._inv.id  # (asked for: the call's record is chained if it was held)

    # SQLite's error refusing a call's record reaches the tool as the typed `Conflict` (what
    # was carried out, what taken back: `store_conflict`), not as a bug of the host.
    async def syscall(self, name: str, args: Any) -> Any:
        try:
            return await self._dispatcher.run(self._proc, self._inv, name, args)
        except sqlite3.Error as exc:
            raise store_conflict(exc) from exc

    def syscall_now(self, name: str, args: Any) -> Any:
        try:
            return self._dispatcher.run_now(self._proc, self._inv, name, args)
        except sqlite3.Error as exc:
            raise store_conflict(exc) from exc

    def is_blocking(self, name: str) -> bool:
        spec = TABLE.get(name)
        return spec is None or spec.blocking

    def log(self, level: str, text: str) -> None:
        self._tools.tool_log(self._proc, self._inv, level, text)

    async def host_tool(self, name: str, args: Any) -> Any:
        return await self._tools.call_host(self._proc, self._inv, name, args)


class ToolHost(SyscallHost, Protocol):
    """What a tool runs against (the kernel's host, or a replay's): syscalls, and the calls
    of a host tool, which tool code cannot reach by any name."""

    async def host_tool(self, name: str, args: Any) -> Any: ...


class ToolTable:
    def __init__(self, kernel: ToolTableNeeds) -> None:
        self.kernel = kernel
        self._sources: Lru[str, bytes] = Lru(MAX_CACHED_SOURCES, MAX_CACHED_SOURCE_BYTES, len)
        # A sandboxed call's code, kept (a frozen dataclass costs ~1 µs to build): by name,
        # language and content hash, so a replaced tool (new source: new hash) never meets
        # the old one's. Its source is the same bytes object `_sources` holds.
        self._codes: Lru[tuple[str, str, str], ToolCode] = Lru(
            MAX_CACHED_SOURCES, MAX_CACHED_SOURCE_BYTES, lambda code: len(code.source))
        self._validators: Lru[int, tuple[Any, Schema]] = Lru(
            MAX_VALIDATORS, MAX_VALIDATOR_CODE_CHARS, lambda found: found[1].size)

    def image_tools(self, image: AgentImage) -> dict[str, dict[str, Any]]:
        tools: dict[str, dict[str, Any]] = {}
        for tool in image.tools:
            if isinstance(tool, str):
                tools[tool] = builtin_spec(tool) if tool in BUILTINS else dict(HOST_ENTRY)
            else:
                tools[tool["name"]] = {k: v for k, v in tool.items() if k != "name"}
        return tools

    def named_spec(self, name: str) -> dict[str, Any]:
        """An image's tool named by a string: a builtin, or a host tool of this kernel."""
        if name in BUILTINS or name not in self.kernel.host_tools:
            return builtin_spec(name)  # InvalidArgument for a name that is neither
        return self.kernel.host_tools.spec(name)

    def check_kind(self, kind: str) -> None:
        self.kernel.host_tools.check_kind(kind)

    def _live(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.kernel.host_tools.spec(name) if spec["lang"] == "host" else spec

    def list_tools(self, pid: int) -> list[dict[str, Any]]:
        """The process's tools as its planner (or a tool) sees them: a tool a labelled process
        registered shows its name, description and schema, so whoever is shown them (this
        process) takes its label on."""
        proc = self.kernel.process(pid)
        listed, labels = [], frozenset[str]()
        for name, spec in sorted(proc.tools.items()):
            if spec["lang"] == "host" and name not in self.kernel.host_tools:
                continue  # not registered in this broker: nothing to call
            spec = self._live(name, spec)
            labels = labels.union(spec.get("labels", ()))
            listed.append({"name": name, "lang": spec["lang"],
                           "description": spec["description"], "schema": spec["schema"]})
        if labels:
            self.kernel.labels.raise_process(proc, labels)
        return listed

    async def invoke_tool(self, pid: int, name: str, args: Any, *,
                          caller: Invocation | None, intent: int | HeldCall,
                          outer: SyscallContext | None = None) -> Any:
        """Run one tool; `intent` is the audit seq of the `tool.call` that asked for it (or
        its record, still held), which becomes the invocation's durable id; `outer`, that
        call's context (`Invocation.outer`)."""
        proc = self.kernel.process(pid)
        spec = proc.tools.get(name)
        if spec is None:
            raise NotFound(f"process {pid} has no tool {name!r}")
        if spec["lang"] == "host":
            spec = self.kernel.host_tools.spec(name)  # read live: never planned
            plan = ToolPlan.make(spec, self._validator(spec["schema"], name))
        else:
            plan = plan_of(proc, name, spec, self._validator)  # kept while `spec` is the entry
        if caller is not None and caller.depth + 1 >= MAX_TOOL_DEPTH:
            raise LimitExceeded(f"tools nested deeper than {MAX_TOOL_DEPTH}")
        plan.validator.check(args, f"tool {name}")  # args as given
        # (A budget that runs out kills: the call's held record is chained before that.)
        self.kernel.budgets.charge(proc, "tool_calls",
                                   None if type(intent) is int else intent.chained)  # type: ignore[union-attr]
        inv = Invocation.start(intent, pid, name, plan.manifest, caller,
                               self.kernel.call_limits, era=proc.era, digest=plan.digest)
        if plan.in_broker:
            inv.in_broker, inv.outer = True, outer
        if plan.wraps is not None:
            inv.checked = (plan.wraps, args)  # by its syscall's own check, just now
            inv.wraps = True
            if type(intent) is not int:  # its read, if held to the end, goes in its record
                intent.wraps = True  # type: ignore[union-attr]
        self.kernel.labels.enter(proc, inv, plan.labels)
        try:
            if plan.wraps is not None and not spec.get("refused"):
                # Exactly one syscall: made as the builtin makes it through its host, without
                # the host, and with the arguments its check just passed (`inv.checked`).
                return await self.kernel.dispatcher.run(proc, inv, plan.wraps.name, args)
            host = KernelHost(self.kernel.dispatcher, self, proc, inv, authority=inv.authority)
            if spec["lang"] in ("builtin", "host"):  # no sandbox: run where it is
                return await self.run_tool(name, spec, args, host, inv.limits)
            sandbox = self.kernel.sandboxes.get(spec["lang"])  # (none: `sandboxed` says so)
            inv.unsendable = getattr(sandbox, "unsendable", None)
            slots = self.kernel.bounds.sandboxes  # a bounded number at once
            try:
                if slots.take_if_free(inv.pid, inv.depth):  # the usual case: no waiting
                    try:
                        return await self.sandboxed(name, spec, args, host, inv.limits)
                    finally:
                        slots.release(inv.pid)
                async with self.kernel.bounds.sandbox(inv) as limits:  # waits for a slot
                    return await self.sandboxed(name, spec, args, host, limits)
            finally:
                self.kernel.events.flush()  # its log lines are stored before its result
        finally:
            self.kernel.labels.leave(proc, inv)  # whatever the outcome: its caller saw it

    async def run_tool(self, name: str, spec: dict[str, Any], args: Any, host: ToolHost,
                       limits: CallLimits) -> Any:
        """Run a tool's code against a host: the kernel's (live) or a replay's."""
        if spec.get("refused"):
            raise Tampered(spec["refused"])  # a stored registration the chain does not vouch for
        if spec["lang"] == "builtin":
            return await BUILTINS[name].fn(args, host)  # type: ignore[arg-type]
        if spec["lang"] == "host":
            return await host.host_tool(name, args)
        return await self.sandboxed(name, spec, args, host, limits)

    def sandboxed(self, name: str, spec: dict[str, Any], args: Any, host: ToolHost,
                  limits: CallLimits) -> Awaitable[Any]:
        """`run_tool` of a tool that runs in a sandbox: its sandbox's call itself, to await
        (a live call awaits it without `run_tool`'s coroutine around it)."""
        if spec.get("refused"):
            raise Tampered(spec["refused"])  # a stored registration the chain does not vouch for
        sandbox = self.kernel.sandboxes.get(spec["lang"])
        if sandbox is None:
            raise InvalidArgument(f"no sandbox for {spec['lang']} tools is running")
        return sandbox.call(self._code(name, spec), args, host, limits)

    async def call_host(self, proc: AgentProcess, inv: Invocation, name: str,
                        args: Any) -> Any:
        """A host tool's call: checked, approved, budgeted and audited by the dispatcher as
        `host.<name>`, under the invocation that `tool.call` started."""
        definition = self.kernel.host_tools.definition(name)
        return await self.kernel.dispatcher.run(proc, inv, definition.name, args,
                                                spec=definition)

    def _validator(self, schema: Any, name: str) -> Schema:
        """A tool's schema compiled, remembered by the schema object it was compiled from (a
        warm call would otherwise spend more on finding it in the schema cache than on the
        check). The object is kept with it, so its id is not reused while it is remembered."""
        found = self._validators.get(id(schema))
        if found is not None and found[0] is schema:
            return found[1]
        compiled = compile_schema(schema, f"tool {name}")
        self._validators[id(schema)] = (schema, compiled)
        return compiled

    def _code(self, name: str, spec: dict[str, Any]) -> ToolCode:
        key = (name, spec["lang"], spec["hash"])
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = tool_code(name, spec, self._source(spec["hash"]))
        return code

    def _source(self, hash_: str) -> bytes:
        source = self._sources.get(hash_)
        if source is None:
            source = self.kernel.store.get_tool_source(hash_)[1]
            self._sources[hash_] = source
        return source

    async def register_tool(self, pid: int, args: dict[str, Any], *,
                            labels: frozenset[str] = frozenset(),
                            registrant: Manifests = (), call: SyscallContext | None = None
                            ) -> dict[str, Any]:
        """`labels`: the registrant's, which every run of the tool takes on (its source may
        hold what the registrant saw). `registrant`: the manifests narrowing the call that
        registers it (a tool's, when a tool registers another). `call`: the `tool.register`
        call's context, told what undoes the registration if the commit of its outcome
        fails (`taken_back`)."""
        proc = self.kernel.process(pid)
        _check_free(proc, args, self.kernel.host_tools)
        era = proc.era
        spec = await self.prepare_tool(args, proc, registrant,  # its manifest: tool.register's
                                       caller=None if call is None else call.invocation)
        try:
            if proc.era != era:  # it exec'd while the check ran: the tool is the old image's
                raise Conflict(f"process {pid} replaced its image while {args['name']!r} was "
                               "checked; it is not registered")
            _check_free(proc, args, self.kernel.host_tools)  # again: others may have come
        except Conflict:
            self._sources.pop(spec["hash"])  # refused: it keeps no memory (a call reads it)
            raise
        name = spec.pop("name")
        if labels:
            spec["labels"] = sorted(labels)
        # Its rows are committed with tool.register's outcome, one commit: a crash before it
        # leaves the intent alone, a registration cut off (`process_tools` leaves one out
        # whose rows a crash kept without its outcome anyway), and nobody was told.
        row = self.kernel.store.put_process_tool(pid, name, spec, defer=True)
        previous = proc.tools.get(name)
        proc.tools[name] = spec
        if row is not None and call is not None:
            call.on_unrecorded(lambda: self.taken_back(call, name, spec, previous, row,
                                                       registrant))
        if call is not None:  # the chain vouches for the whole row, not its code alone
            call.outcome_detail[SPEC_HASH] = spec_digest(spec)
        return {"name": name, "lang": spec["lang"], "hash": spec["hash"]}

    def taken_back(self, call: SyscallContext, name: str, spec: dict[str, Any],
                   previous: dict[str, Any] | None, row: Withdrawable,
                   registrant: Manifests) -> str | None:
        """A registration whose outcome's commit failed (its caller told so) is taken back
        while its row still waits: the row withdrawn, so the store never gets it; a record
        that says so (its outcome, which says it was registered, may still wait to be
        committed: this one follows it, `vouch.TAKEN_BACK`); the process's table as it was
        (a tool it replaced is back), so memory says what the store does; a sandbox its check
        left the code loaded in let go. None if the row is durable already (another commit
        carried it): then the tool stays, as stored."""
        if not row.withdraw():
            return None
        proc = cast("AgentProcess", call.process)
        told = f"tool {name!r} is not {'replaced' if previous else 'registered'}"
        inv = call.invocation
        record = AuditRecord("outcome", REGISTER, proc.pid, None if inv is None else inv.id,
                             None if inv is None else inv.tool, spec["lang"], call.args_hash,
                             detail={"ok": False, "intent": call.intent_seq, TAKEN_BACK: True,
                                     "name": name, "error": Conflict.code, "message": told})
        try:
            self.kernel.store.append_audit(record, defer=True)  # (with what waits)
        except STORE_FAULTS as exc:  # (a chain shared with other brokers commits it now)
            log.warning("the record taking back tool %r failed (%s): its registration's "
                        "outcome was not stored either", name, exc)
        if proc.tools.get(name) is spec:  # (unless it exec'd or replaced it again since)
            if previous is None:
                del proc.tools[name]
            else:
                proc.tools[name] = previous
        sandbox = self.kernel.sandboxes.get(spec["lang"])
        if sandbox is not None:
            sandbox.forget_checked(name, spec["hash"], self._check_authority(
                proc, registrant, spec["manifest"]))
        return told

    async def prepare_tool(self, args: Mapping[str, Any], proc: AgentProcess | None = None,
                           registrant: Manifests = (), *, caller: Invocation | None = None
                           ) -> dict[str, Any]:
        """Check a tool written at run time for `proc` (or shipped in an image) and store its
        source content-addressed. (That a run-time tool's manifest only narrows the
        registering process's authority is `tool.register`'s own check, in the syscall
        table.) A driver that can checks a process's tool in the sandbox that will run its
        first (top-level) call, bound to that call's authority: never more than the
        registrant's own (a tool registered by a narrowed tool is checked under that tool's
        manifests too, as the calls it makes of it run; the planner's first call then takes
        another sandbox). That check holds a live-sandbox slot (`Bounds.check`: `caller`,
        the invocation registering it, if a tool does)."""
        lang = args.get("lang")
        sandbox = self.kernel.sandboxes.get(lang) if isinstance(lang, str) else None
        if sandbox is None:
            raise InvalidArgument(f"no sandbox for {lang!r} tools is running")
        source = args.get("source")
        if isinstance(source, str):
            source = source.encode()
        if not isinstance(source, bytes) or not source or len(source) > MAX_TOOL_SOURCE:
            raise InvalidArgument(f"tool source must be 1 byte to {MAX_TOOL_SOURCE} bytes")
        schema = args.get("schema") or {"type": "object"}
        checks = compile_schema(schema, "tool schema")
        # The entry keeps a copy of its own: the registrant's dict (an embedder's, a host
        # tool's) may change after, and the entry, the compile kept by it and the stored row
        # must all name the schema registered.
        schema = json.loads(_json_text(schema))
        manifest = args.get("manifest")
        if manifest is not None:
            manifest = [CapSpec.parse(m).to_wire() for m in manifest]
        if proc is None:
            prepared = await sandbox.prepare(args["name"], lang, source)
        else:
            async with self.kernel.bounds.check(proc.pid, caller):
                prepared = await sandbox.prepare(
                    args["name"], lang, source,
                    authority=self._check_authority(proc, registrant, manifest),
                    memory_mb=self.kernel.call_limits.memory_mb)
        stored = bytes(prepared)
        digest = hashlib.sha256(stored).hexdigest()
        # Content-addressed and harmless alone: committed with what registers it (the
        # outcome of tool.register, the image's row).
        self.kernel.store.put_tool_source(digest, lang, stored, defer=True)
        self._sources[digest] = stored  # what is stored: a first call need not read it
        self._validators[id(schema)] = (schema, checks)  # (nor compile its schema again)
        return {"name": args["name"], "lang": lang, "hash": digest, "schema": schema,
                "description": args.get("description", ""), "manifest": manifest,
                "manifest_hash": _manifest_hash(manifest)}

    @staticmethod
    def _check_authority(proc: AgentProcess, registrant: Manifests,
                         manifest: list[Any] | None) -> str:
        """The authority of a run-time tool's first (top-level) call, which its check runs
        under (`prepare_tool`)."""
        manifests = registrant if manifest is None else (
            *registrant, tuple(CapSpec.parse(m) for m in manifest))
        return authority_of(proc.pid, proc.era, manifests)

    def tool_log(self, proc: AgentProcess, inv: Invocation, level: str, text: str) -> None:
        """A tool's console output. Charged to the call's output cap and the process's log
        bound; past either the call fails with `LimitExceeded` (the driver kills the
        sandbox)."""
        self.kernel.bounds.charge_log(proc, inv, text)
        self.kernel.events.emit_batched(proc.pid, "log", tool=inv.tool, inv=inv.id,
                                        level=str(level)[:16], text=text[:MAX_LOG_TEXT])


def _check_free(proc: AgentProcess, args: Mapping[str, Any], host_tools: Container[str]
                ) -> None:
    """A run-time tool may take a name the process has not (or replace one of its own run-time
    tools when asked to): never a builtin's or a host tool's of this kernel (an MCP server's
    too), listed in the process or not, so nobody is shown the model's code under their name;
    never by accident."""
    if args["name"] in BUILTINS or args["name"] in host_tools:
        kind = "builtin" if args["name"] in BUILTINS else "host"
        raise Conflict(f"{args['name']!r} is the name of a {kind} tool")
    existing = proc.tools.get(args["name"])
    if existing is not None and existing["lang"] in ("builtin", "host"):
        raise Conflict(f"{args['name']!r} is a {existing['lang']} tool")
    if existing is not None and not args.get("replace"):
        raise Conflict(f"process {proc.pid} has a tool {args['name']!r} already (register "
                       "it with replace: true to replace it)")


def _manifest_hash(manifest: list[Any] | None) -> str:
    if manifest is None:
        return _NO_MANIFEST_HASH  # (most tools have none)
    return hashlib.sha256(repr(manifest).encode()).hexdigest()[:16]


_NO_MANIFEST_HASH = hashlib.sha256(repr(None).encode()).hexdigest()[:16]
_json_text = encoder()  # (key order kept, as stored)


def tool_code(name: str, spec: dict[str, Any], source: bytes) -> ToolCode:
    return ToolCode(name=name, lang=spec["lang"], source=source, hash=spec["hash"])
