"""Compiled WebAssembly modules, once per content hash.

One `Engine` per sandbox (fuel and epoch interruption on; threads, memory64, GC and the
component model off). A module is compiled once per content hash, checked against the guest
ABI (`sandboxes/wasm_abi.check_module`), linked with the host functions ahead of time, and its
compiled artefact is written to a cache directory so a restarted broker loads it instead of
compiling again. A damaged artefact, or one of another wasmtime build or configuration, is
discarded and the module compiled again.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import mmap
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from broker.errors import InvalidArgument, LimitExceeded
from broker.lru import Lru
from sandboxes import wasm_ffi as F
from sandboxes import wasm_guest
from sandboxes.wasm_abi import check_module, signature, trap_text
from sandboxes.wasm_compile import compile_in_child, is_small
from sandboxes.wasm_config import COMPILER, OPT_LEVEL, engine_config
from sandboxes.wasm_data import MAX_SEGMENTS, data_segments, split_data
from sandboxes.wasm_entry import CompiledModule, native_bytes

log = logging.getLogger("libos.sandboxes.wasm")

WASM_MAGIC = b"\0asm\x01\0\0\0"
# Compiled modules kept in memory, by count and by the bytes of native code they hold (a WAT
# tool's is ~47 KB, 10-13x its module): a model can register many large tools. An evicted one
# is loaded from its artefact, or compiled, at its next call.
MAX_CACHED_MODULES, MAX_CACHED_MODULE_BYTES = 1024, 64 << 20


def make_engine(max_wasm_stack: int, *, calls: int, max_table_elements: int,
                max_tables: int) -> tuple[wasmtime.Engine, bool]:
    """An engine for at most `calls` calls at once (the scheduler never runs more; one more
    fails at instantiation), each a store of at most two instances (a tool linked with the
    guest library), one memory and `max_tables` tables; and whether it takes them from a
    pool reserved up front (`_pooling`) or maps each on demand (when the process has no
    room left for a pool)."""
    cfg = engine_config(max_wasm_stack)
    # Compiled on the calling thread, not handed to a pool of threads: a tool's module is a
    # few small functions (the linked form's, at registration, ~5 M instructions), for which
    # the hand-offs cost more than they share, and on a busy machine each waits for a core.
    # The background compile of a whole module then takes one core, not all of them, from
    # the calls meanwhile. (A large module compiles in a child, `wasm_compile`, in parallel.)
    cfg.parallel_compilation = False
    with _ENGINES:
        pooled = _room_for(_pool_bytes(calls))
        if not pooled:
            gc.collect()  # sandboxes no longer referenced give their engine's pool back
            pooled = _room_for(_pool_bytes(calls))
        if pooled:
            _pooling(cfg, calls, max_table_elements, max_tables)
        else:
            log.warning("no address space left for another wasm pool of %d GiB: this "
                        "sandbox maps each call's memory on demand (slower calls)",
                        _pool_bytes(calls) >> 30)
        return wasmtime.Engine(cfg), pooled


# wasmtime aborts the whole process (a panic in its C API, no error to catch) when an
# engine's pool cannot be reserved, which happens after a few hundred pools (each ~4 GiB of
# address space per call slot, 165 GiB for the default 41) or sooner under RLIMIT_AS. So
# room is checked first, with a margin for what other threads may map meanwhile (on-demand
# calls map ~4 GiB each), and engines are made one at a time.
_ENGINES = threading.Lock()
POOL_MARGIN = 16 << 30
_MEMORY_SLOT = (4 << 30) + (64 << 20)  # a memory slot and its guard, rounded up
_INSTANCE_SLOT = 32 << 20


def _pool_bytes(calls: int) -> int:
    """An upper bound on the address space `_pooling` reserves for `calls` calls."""
    return calls * (_MEMORY_SLOT + 2 * _INSTANCE_SLOT) + (1 << 30)


def _room_for(size: int) -> bool:
    """Whether `size` bytes (and the margin) of address space can be reserved now: a
    reservation with no access, which costs no memory, made and given back."""
    try:
        probe = mmap.mmap(-1, size + POOL_MARGIN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                          prot=0)
    except (OSError, OverflowError, ValueError):
        return False
    probe.close()
    return True


def _pooling(cfg: wasmtime.Config, calls: int, max_table_elements: int,
             max_tables: int) -> None:
    """Instances, memories and tables from slots reserved once per engine, not mapped and
    unmapped per call (which was half of a short call's cost). Each call still gets a fresh
    instance and fresh memory: a slot given back is reset (zeroed, its data segments mapped
    again copy-on-write) before it is handed out again. The store's limits (memory, tables)
    stay what bound a call; the pool's are only as large as what a store may hold."""
    # Any module within the size limit fits an instance slot (its own state, with its
    # functions' references, grows with the module); all of wasm32 fits a memory slot. The
    # first 256 KiB of a slot's memory are zeroed in place when it is given back (a memset of
    # what a short call touches is cheaper than giving the pages back and faulting them in).
    F.use_pooling(cfg, instances=2 * calls, memories=calls, tables=calls * max_tables,
                  tables_per_module=max_tables, table_elements=max_table_elements,
                  memory_bytes=4 << 30, instance_bytes=_INSTANCE_SLOT,
                  keep_resident=256 << 10)


@dataclass(slots=True)
class Library:
    """The guest library compiled once as a module of its own (`wasm_guest.library_text`)."""

    entry: CompiledModule
    name: str                        # the import module a linked tool names
    signatures: dict[str, tuple[object, ...] | None]  # its exports' types (`wasm_abi.signature`)
    imports: dict[str, str]          # `$name` (and `memory`): the import field for it


class ModuleCache:
    """Modules of one engine and linker, in memory and (with a `cache_dir`) on disk."""

    def __init__(self, engine: wasmtime.Engine, linker: wasmtime.Linker,
                 cache_dir: str | os.PathLike[str] | None, *, max_wasm_stack: int,
                 max_module_bytes: int, stats: dict[str, int],
                 compile_seconds: float = 10.0) -> None:
        self._engine = engine
        self.compile_seconds = compile_seconds
        self._linker = linker
        self.max_wasm_stack = max_wasm_stack
        self.max_module_bytes = max_module_bytes
        self.stats = stats
        self.entries: Lru[str, CompiledModule] = Lru(
            MAX_CACHED_MODULES, MAX_CACHED_MODULE_BYTES, lambda e: e.size, self._evicted)
        self._lock = threading.RLock()
        self._library: Library | None = None
        # One writer thread, started at the first write and kept: starting a thread per
        # artefact cost a registration 0.1-2 ms (more on a busy machine).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="libos-wasm-artefact")
        self._lock_writes = threading.Lock()
        self._writes: list[Future[None]] = []
        # The whole modules of linked entries, until their first call has ended (`called`);
        # counted in their entries' size, and forgotten with them.
        self._wholes: dict[str, bytes] = {}
        self.cache_dir = self._cache_dir(cache_dir)

    def _fingerprint(self) -> str:
        # (the compiler too: wasmtime itself may load another compiler's artefact)
        settings = (f"wasmtime-50;stack={self.max_wasm_stack};fuel;epoch;pooling;v2;"
                    f"{COMPILER}/{OPT_LEVEL}")
        return hashlib.sha256(settings.encode()).hexdigest()[:16]

    def _cache_dir(self, cache_dir: str | os.PathLike[str] | None) -> Path | None:
        if cache_dir is None:
            return None
        path = Path(cache_dir) / f"modules-{self._fingerprint()}"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # An artefact is native code wasmtime runs as it finds it: one others could put there
        # (or a link to their directory) would run in the broker. (The directory given may be
        # group-writable, as a umask of 002 makes it: the group could only put a directory of
        # its own, or a link, in place of ours, which is then refused.)
        for directory, others in ((path.parent, 0o002), (path, 0o022)):
            st = directory.lstat()
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or st.st_mode & others):
                log.warning("not caching compiled modules in %s: not a directory this user "
                            "alone may write (mode %03o, owner %d)", directory,
                            st.st_mode & 0o777, st.st_uid)
                return None
        return path

    def to_wasm(self, lang: str, source: bytes) -> tuple[bytes, bytes | None]:
        """A module's bytes: WAT text assembled (with the libos prelude expanded), or a
        binary module as it is; and for WAT with the prelude marker, the same tool assembled
        to import the guest library module instead (None if it names functions by index)."""
        linked = None
        if lang == "wat":
            try:
                text = source.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument("WAT source must be UTF-8 text") from None
            if text.lstrip().startswith("\0"):
                raise InvalidArgument("WAT source looks binary; register it as wasm")
            try:
                wasm = bytes(wasmtime.wat2wasm(wasm_guest.expand(text)))
            except wasmtime.WasmtimeError as exc:
                raise InvalidArgument(f"WAT does not assemble: {str(exc)[:1000]}") from None
            if wasm_guest.MARKER in text and (
                    linked_text := wasm_guest.link(text, self.library().imports)):
                with contextlib.suppress(wasmtime.WasmtimeError):  # then whole, as before
                    linked = bytes(wasmtime.wat2wasm(linked_text))
        else:
            wasm = source
            if not wasm.startswith(WASM_MAGIC):
                raise InvalidArgument("not a WebAssembly core module (bad magic or version)")
        if len(wasm) > self.max_module_bytes:
            raise InvalidArgument(f"module is over {self.max_module_bytes} bytes")
        return wasm, linked

    def load_linked(self, digest: str, wasm: bytes, linked: bytes) -> CompiledModule:
        """The entry for a WAT tool being registered: `linked` (the tool alone, importing the
        guest library) compiled now, which is quick, and served until `wasm` (the whole
        module, what is stored and cached) is compiled in the background, once its first
        call has ended (`called`), and takes its place. Both come from the same text; the
        whole module is validated now, so what is stored is a module that compiles. If the
        linked form is refused, the whole module is compiled now instead, as for any
        module."""
        entry = self.entries.get(digest)
        if entry is not None:
            return entry
        path = self._artefact(digest)
        if path is not None and path.is_file():
            return self.load(digest, wasm)  # compiled before: its artefact loads faster
        try:
            wasmtime.Module.validate(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidArgument(f"invalid module: {trap_text(str(exc))}") from None
        if data_segments(linked) > MAX_SEGMENTS:
            return self.load(digest, wasm)  # (`wasm_data`: whole, its segments in an image)
        # (its data segments, if plain, written by each call rather than compiled)
        linked, data = split_data(linked) or (linked, ())
        try:
            early = self._outside_lock(linked, "")
        except InvalidArgument:
            return self.load(digest, wasm)  # the linked form is refused: the whole module
        with self._lock:
            entry = self.entries.get(digest)
            if entry is not None:
                return entry
            library = self.library()
            try:
                # never cached: it lives until the swap
                module, _ = early or self._module(linked, "", small=True)
                links = check_module(linked, (library.name, library.signatures))
            except InvalidArgument:
                links = None
            if links is None:  # the linked form is refused: the whole module, as before
                return self.load(digest, wasm)
            self.stats["linked"] += 1
            entry = CompiledModule(digest, module, None, links, library.entry.pre,
                                   native_bytes(module) + len(wasm), data)
            with self._lock_writes:
                self._wholes[digest] = wasm
            self.entries[digest] = entry
            return entry

    def called(self, entry: CompiledModule) -> None:
        """A call of `entry` has ended: if it is a linked form just registered, start
        compiling its whole module in the background now. Not at registration: that compile
        (several times the linked one) then competed for the CPU with the registration and
        the first call, which a person or model is waiting for (on a busy 2-core machine,
        registration + first call took 1.6x as long with it)."""
        if entry.links is not None and entry.hash in self._wholes:
            self._compile_whole(entry.hash)

    def _evicted(self, digest: str, entry: CompiledModule) -> None:
        with self._lock_writes:
            self._wholes.pop(digest, None)  # its next call compiles the stored module

    def _compile_whole(self, digest: str) -> None:
        with self._lock_writes:
            wasm = self._wholes.pop(digest, None)
            entry = self.entries.get(digest)
            if wasm is not None and entry is not None and entry.links is not None:
                self._writes.append(self._writer.submit(self._replace, entry, wasm))

    def _replace(self, linked: CompiledModule, wasm: bytes) -> None:
        """In the writer thread: compile the whole module and put it in the linked entry's
        place (calls under way keep the entry they have), then write its artefact."""
        try:
            module = self._compile(wasm)
            check_module(wasm)
            entry = CompiledModule(linked.hash, module, self._linker.instantiate_pre(module),
                                   size=native_bytes(module))
        except (wasmtime.WasmtimeError, InvalidArgument, LimitExceeded) as exc:
            log.error("wasm tool %s: the whole module does not compile (%s); its linked "
                      "form serves it", linked.hash[:16], trap_text(str(exc)))
            return
        with self._lock:
            if self.entries.get(linked.hash) is linked:
                self.entries[linked.hash] = entry
            self.stats["compiled"] += 1
        path = self._artefact(linked.hash)
        if path is not None:
            self._write(path, module.serialize())

    def load(self, digest: str, wasm: bytes) -> CompiledModule:
        """The entry for a module: from memory, else from the artefact cache, else compiled
        (and its artefact cached). Runs in a worker thread."""
        entry = self.entries.get(digest)
        if entry is not None:
            return entry
        early = self._outside_lock(wasm, digest)
        with self._lock:
            entry = self.entries.get(digest)
            if entry is not None:
                return entry
            module, compiled = early or self._module(wasm, digest, small=True)
            # (the library is compiled only for a module that names it: any that imports it)
            named = wasm_guest.library_module_name().encode() in wasm
            library = self.library() if named else None
            links = check_module(wasm, (library.name, library.signatures) if library else None)
            self._keep(digest, module, compiled)
            if links is not None:
                entry = CompiledModule(digest, module, None, links, library.entry.pre,
                                       native_bytes(module))
            else:
                try:
                    pre = self._linker.instantiate_pre(module)
                except wasmtime.WasmtimeError as exc:
                    raise InvalidArgument(
                        f"cannot link module: {trap_text(str(exc))}") from None
                entry = CompiledModule(digest, module, pre, size=native_bytes(module))
            self.entries[digest] = entry
            return entry

    def _module(self, wasm: bytes, digest: str, *,
                small: bool | None = None) -> tuple[wasmtime.Module, bool]:
        """The module from the artefact cache, else compiled (True). (`small`: whether
        `wasm_compile.is_small`, when known already.)"""
        module = self._deserialize(digest) if digest else None
        if module is not None:
            return module, False
        try:
            return self._compile(wasm, small), True
        except wasmtime.WasmtimeError as exc:
            raise InvalidArgument(f"invalid module: {trap_text(str(exc))}") from None

    def _outside_lock(self, wasm: bytes, digest: str) -> tuple[wasmtime.Module, bool] | None:
        """A module that compiles in a child, compiled before the lock is taken: its seconds
        must not hold up every other registration and load (two may compile it at once)."""
        return None if is_small(wasm) else self._module(wasm, digest, small=False)

    def _compile(self, wasm: bytes, small: bool | None = None) -> wasmtime.Module:
        """Compile here a module whose functions are small (`wasm_compile.is_small`), which
        tools are; any other in a child process given `compile_seconds` of CPU, killed when
        it is over them (`LimitExceeded`): Cranelift cannot be interrupted, and some shapes
        take it minutes."""
        if is_small(wasm) if small is None else small:
            return wasmtime.Module(self._engine, wasm)
        wasmtime.Module.validate(self._engine, wasm)  # linear: a bad module is refused here
        self.stats["isolated"] += 1
        return compile_in_child(self._engine, wasm, max_wasm_stack=self.max_wasm_stack,
                                seconds=self.compile_seconds)

    def _keep(self, digest: str, module: wasmtime.Module, compiled: bool,
              stat: str = "") -> None:
        """Count a checked module, and write the artefact of one just compiled."""
        self.stats[stat or ("compiled" if compiled else "loaded")] += 1
        if compiled:
            self._serialize(digest, module)

    def library(self) -> Library:
        """The guest library module of this engine, compiled (or loaded) at its first use."""
        if self._library is not None:
            return self._library
        with self._lock:
            if self._library is None:
                wasm = bytes(wasmtime.wat2wasm(wasm_guest.library_text()))
                digest = hashlib.sha256(wasm).hexdigest()
                module, compiled = self._module(wasm, digest)  # ours: no ABI check
                self._keep(digest, module, compiled, "library")
                entry = CompiledModule(digest, module, self._linker.instantiate_pre(module))
                name = wasm_guest.library_module_name()
                types = {e.name: e.type for e in module.exports}
                self._library = Library(entry, name, {n: signature(t) for n, t in types.items()},
                                        _import_fields(name, types))
            return self._library

    def _artefact(self, digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{digest}.cwasm"

    def _deserialize(self, digest: str) -> wasmtime.Module | None:
        path = self._artefact(digest)
        if path is None or not path.is_file():
            return None
        try:
            return wasmtime.Module.deserialize_file(self._engine, str(path))
        except wasmtime.WasmtimeError as exc:
            # Another wasmtime build or configuration, or a damaged file: compile again.
            log.warning("discarding cached module %s: %s", path.name, trap_text(str(exc)))
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _serialize(self, digest: str, module: wasmtime.Module) -> None:
        """Write the artefact in the writer thread: its fsync (milliseconds) is not the
        registration's to wait for; `flush` waits for every write."""
        path = self._artefact(digest)
        if path is None:
            return
        data = module.serialize()
        with self._lock_writes:
            self._writes = [w for w in self._writes if not w.done()]
            self._writes.append(self._writer.submit(self._write, path, data))

    def flush(self) -> None:
        """Compile the whole modules of linked entries not called yet, and wait until every
        artefact started is written."""
        for digest in list(self._wholes):
            self._compile_whole(digest)
        with self._lock_writes:
            writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def _write(self, path: Path, data: bytes) -> None:
        # fsync, then rename: a torn artefact must never be found (deserializing trusts it).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache module %s: %s", path.stem, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def clear(self) -> None:
        self.entries.clear()
        self._wholes.clear()


def _import_fields(library: str, types: dict[str, object]) -> dict[str, str]:
    """The import field, in WAT, of each of the library's exports, by the `$name` a tool uses
    for it (and `memory`)."""
    fields = {}
    for name, ty in types.items():
        if isinstance(ty, wasmtime.FuncType):
            sig = "".join([*(f" (param {t})" for t in ty.params),
                           *(f" (result {t})" for t in ty.results)])
            fields[f"${name}"] = f'(import "{library}" "{name}" (func ${name}{sig}))'
        elif isinstance(ty, wasmtime.GlobalType):
            content = f"(mut {ty.content})" if ty.mutable else str(ty.content)
            fields[f"${name}"] = f'(import "{library}" "{name}" (global ${name} {content}))'
        elif isinstance(ty, wasmtime.MemoryType):
            fields[name] = f'(import "{library}" "{name}" (memory {ty.limits.min}))'
    return fields
