"""WebAssembly tools in Wasmtime: nothing but the `libos` host functions.

The driver ties three rooms together:

* `sandboxes/wasm_cache.py`: one `Engine` per sandbox and its modules, compiled once per
  content hash, checked against the ABI and cached on disk as compiled artefacts;
* `sandboxes/wasm_abi.py`: the guest ABI (`wasm-tools/ABI.md`): what a module may import and
  must export, the host functions with their memory checks, and one attempt at a call in a
  fresh `Store` and instance with its own fuel, epoch deadline and memory/table/instance
  limits, so no state survives between calls;
* `sandboxes/wasm_schedule.py`: where a call runs (inline on the trio thread within a slice,
  else re-run in a worker thread with its syscalls replayed) and the deadlines there.

`sandboxes/wasm_call.py` holds one call's state, which the ABI and the scheduler share, and
`sandboxes/wasm_ffi.py` the thin fast path over wasmtime-py's C bindings that both use.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import trio

from broker.errors import InvalidArgument, LibosError, LimitExceeded, SandboxCrashed
from broker.protocol import pack
from sandboxes.base import CallLimits, SandboxDriver, SyscallHost, ToolCode
from sandboxes.wasm_abi import GuestAbi
from sandboxes.wasm_answer import answer_bytes
from sandboxes.wasm_cache import ModuleCache, make_engine
from sandboxes.wasm_entry import CompiledModule
from sandboxes.wasm_schedule import Rerun, Scheduler


class WasmSandbox(SandboxDriver):
    """The `Sandbox` for `wat` and `wasm` tools."""

    kind = "wasm"
    langs = ("wat", "wasm")

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        inline: bool = True,
        inline_fuel: int = 1_000_000,
        inline_seconds: float = 0.002,
        inline_memory_mb: int = 16,
        tick: float = 0.01,
        max_module_bytes: int = 1 << 20,
        max_message_bytes: int = 4 << 20,
        max_wasm_stack: int = 512 << 10,
        max_table_elements: int = 10_000,
        max_tables: int = 4,
        max_threaded_calls: int = 40,
        compile_seconds: float = 10.0,
    ) -> None:
        self.max_module_bytes = max_module_bytes
        self.max_message_bytes = max_message_bytes
        self.stats = {"compiled": 0, "loaded": 0, "inline": 0, "threaded": 0, "restarted": 0,
                      "library": 0, "linked": 0, "isolated": 0}
        # At most one inline attempt (on the trio thread) and `max_threaded_calls` calls in
        # worker threads hold a store at once.
        engine, self.pooled = make_engine(max_wasm_stack, calls=max_threaded_calls + 1,
                                          max_table_elements=max_table_elements,
                                          max_tables=max_tables)
        self.abi = GuestAbi(engine, max_message_bytes=max_message_bytes,
                            max_wasm_stack=max_wasm_stack,
                            max_table_elements=max_table_elements, max_tables=max_tables)
        self.cache = ModuleCache(engine, self.abi.linker, cache_dir,
                                 max_wasm_stack=max_wasm_stack,
                                 max_module_bytes=max_module_bytes, stats=self.stats,
                                 compile_seconds=compile_seconds)
        self.scheduler = Scheduler(self.abi, self.stats, inline=inline, inline_fuel=inline_fuel,
                                   inline_seconds=inline_seconds,
                                   inline_memory_mb=inline_memory_mb, tick=tick,
                                   threads=max_threaded_calls)
        self.cache_dir = self.cache.cache_dir
        self._closed = False

    # -- registration -----------------------------------------------------------------------

    async def prepare(self, name: str, lang: str, source: bytes, *,
                      authority: str | None = None, memory_mb: int | None = None) -> bytes:
        """Check a tool at registration: WAT text (with the libos prelude expanded) or a
        binary module; its imports and exports must follow the ABI. Returns the module's
        bytes, which are what the kernel stores and what `call` gets back."""
        if lang not in self.langs:
            raise InvalidArgument(f"the wasm sandbox does not run {lang!r} tools")
        if not isinstance(source, bytes | bytearray) or not source:
            raise InvalidArgument("a wasm tool needs a non-empty source")
        if len(source) > self.max_module_bytes:
            raise InvalidArgument(f"tool source is over {self.max_module_bytes} bytes")
        self._check_open()
        return await trio.to_thread.run_sync(self._compile, lang, bytes(source))

    def _compile(self, lang: str, source: bytes) -> bytes:
        """Assemble and compile a tool in one worker thread (one hop, not two)."""
        wasm, linked = self.cache.to_wasm(lang, source)
        digest = hashlib.sha256(wasm).hexdigest()
        if linked is None:
            self.cache.load(digest, wasm)
        else:
            self.cache.load_linked(digest, wasm, linked)
        return wasm

    async def _entry(self, code: ToolCode) -> CompiledModule:
        entry = self.cache.entries.get(code.hash)
        if entry is not None:
            return entry
        if hashlib.sha256(code.source).hexdigest() != code.hash:
            raise SandboxCrashed(f"tool {code.name}: stored module does not match its hash")
        return await trio.to_thread.run_sync(self.cache.load, code.hash, code.source)

    # -- calls ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxCrashed("the wasm sandbox is closed")

    async def call(self, code: ToolCode, args: Any, host: SyscallHost,
                   limits: CallLimits) -> Any:
        self._check_open()
        deadline = time.monotonic() + limits.deadline
        entry = self.cache.entries.get(code.hash)  # compiled already: no coroutine to await
        if entry is None:
            entry = await self._entry(code)
        try:
            payload = pack(args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(f"tool arguments cannot be encoded: {exc}") from None
        if len(payload) > self.max_message_bytes:
            raise LimitExceeded(f"tool arguments are over {self.max_message_bytes} bytes")
        scheduler = self.scheduler
        try:
            done = scheduler.call_inline(entry, payload, host, limits, deadline)
            if type(done) is Rerun:  # (else the value: no coroutine more for a warm call)
                return await scheduler.call_threaded(entry, payload, host, limits, deadline,
                                                     done)
            return done
        finally:
            self.cache.called(entry)

    def unsendable(self, answer: Any) -> str | None:
        """`Sandbox.unsendable`: a WASM tool is sent an answer within its message bound (not
        a frame: a 5 MiB message fits Deno's, not this)."""
        sent = answer_bytes(answer, self.max_message_bytes)
        return sent.message if isinstance(sent, LibosError) else None

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.cache.flush)  # artefacts being written
        self.cache.clear()
        self.scheduler.forget()
