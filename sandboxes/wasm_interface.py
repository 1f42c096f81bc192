"""A module's interface (its imports and exports, with their types) read from its bytes.

The guest ABI's check (`wasm_abi.check_module`) needs little more than a module's imports and
exports. wasmtime-py gives them as type objects (several Python objects, each with a
finalizer, per value type), which cost a WAT tool's registration more than any other part
of the check; worse, its C API aborts the whole process (a Rust panic, no error to catch)
when it is asked the kind of a `v128` value type, so a tool importing `libos.syscall` with a
`v128` parameter, or exporting `run` with one, took the broker down when checked. Read here
from the binary instead: one pass over the type, import, function, memory and export
sections (the others skipped by their size), of a module wasmtime has already validated
(compiled or loaded), so every index is in range; anything this reader does not follow is
`Unreadable` (the module is refused).
"""

from __future__ import annotations

from typing import Any

# A value type's name (wasmtime-py's `str(ValType)` for the numbers, which the guest library's
# signatures use), by its one-byte encoding: the only value types the engine's features allow.
VALUE_TYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
               0x70: "funcref", 0x6F: "externref"}
_FUNC, _TABLE, _MEMORY, _GLOBAL, _TAG = range(5)
_OTHER_EXPORTS = {_TABLE: ("table",), _GLOBAL: ("global",), _TAG: ("tag",)}

# An import's or export's type: ("func", params, results), ("global", content, mutable),
# ("memory", minimum, maximum or None, is_64, is_shared, page_size), ("table",); an exported
# global is ("global",) alone (the ABI asks nothing of one).
Extern = tuple[Any, ...]


class Unreadable(Exception):
    """Bytes this reader does not follow (never a module wasmtime validated, short of a bug)."""


class Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Unreadable("unexpected end")
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self, bits: int = 32) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= bits:
                raise Unreadable("integer too long")

    def sleb(self) -> int:
        """A signed LEB128 of at most 32 bits (an `i32.const`'s operand)."""
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value - (1 << shift) if byte & 0x40 else value
            if shift >= 35:
                raise Unreadable("integer too long")

    def name(self) -> str:
        size = self.uleb()
        end = self.pos + size
        if end > len(self.data):
            raise Unreadable("name past the end")
        raw, self.pos = self.data[self.pos:end], end
        return raw.decode("utf-8")

    def value_types(self) -> tuple[str, ...]:
        names = []
        for _ in range(self.uleb()):
            name = VALUE_TYPES.get(self.byte())
            if name is None:
                raise Unreadable("value type not followed")
            names.append(name)
        return tuple(names)

    def memory(self) -> Extern:
        flags = self.byte()
        if flags & ~0x0F:
            raise Unreadable("memory limits not followed")
        is_64 = bool(flags & 0x04)
        bits = 64 if is_64 else 32
        minimum = self.uleb(bits)
        maximum = self.uleb(bits) if flags & 0x01 else None
        page_size = 65536
        if flags & 0x08:
            # (its log2: 0 or 16 are all there are; shifting by whatever the bytes hold made
            # a 4 GiB integer of bytes no engine had validated)
            log2 = self.uleb()
            if log2 > 16:
                raise Unreadable("memory page size not followed")
            page_size = 1 << log2
        return ("memory", minimum, maximum, is_64, bool(flags & 0x02), page_size)

    def table(self) -> Extern:
        if self.byte() not in (0x70, 0x6F):
            raise Unreadable("table type not followed")
        flags = self.byte()
        if flags & ~0x05:
            raise Unreadable("table limits not followed")
        bits = 64 if flags & 0x04 else 32
        self.uleb(bits)
        if flags & 0x01:
            self.uleb(bits)
        return ("table",)


def interface(wasm: bytes) -> tuple[list[tuple[str, str, Extern]], dict[str, Extern]]:
    """The imports (module, name, type), in order, and the exports (by name) of a validated
    module; `Unreadable` if its bytes are not what this reader follows."""
    try:
        return _interface(wasm)
    except (IndexError, UnicodeDecodeError, KeyError) as exc:
        raise Unreadable(str(exc)) from None


def _interface(wasm: bytes) -> tuple[list[tuple[str, str, Extern]], dict[str, Extern]]:
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise Unreadable("not a core module")
    r = Reader(wasm, 8)
    types: list[Extern] = []
    funcs: list[Extern] = []      # the function index space's types
    memories: list[Extern] = []   # the memory index space's
    imports: list[tuple[str, str, Extern]] = []
    exports: dict[str, Extern] = {}
    while r.pos < len(wasm):
        section = r.byte()
        size = r.uleb()
        end = r.pos + size
        if end > len(wasm):
            raise Unreadable("section past the end")
        if section == 1:  # type: function types only (no GC: nothing else validates)
            for _ in range(r.uleb()):
                if r.byte() != 0x60:
                    raise Unreadable("type not followed")
                types.append(("func", r.value_types(), r.value_types()))
        elif section == 2:  # import
            for _ in range(r.uleb()):
                module, name, kind = r.name(), r.name(), r.byte()
                if kind == _FUNC:
                    extern = types[r.uleb()]
                    funcs.append(extern)
                elif kind == _TABLE:
                    extern = r.table()
                elif kind == _MEMORY:
                    extern = r.memory()
                    memories.append(extern)
                elif kind == _GLOBAL:
                    content = VALUE_TYPES.get(r.byte())
                    mutable = r.byte()
                    if content is None or mutable > 1:
                        raise Unreadable("global type not followed")
                    extern = ("global", content, mutable == 1)
                else:
                    raise Unreadable("import kind not followed")
                imports.append((module, name, extern))
        elif section == 3:  # function: their types
            funcs.extend(types[r.uleb()] for _ in range(r.uleb()))
        elif section == 5:  # memory
            memories.extend(r.memory() for _ in range(r.uleb()))
        elif section == 7:  # export
            for _ in range(r.uleb()):
                name, kind, index = r.name(), r.byte(), r.uleb()
                if kind == _FUNC:
                    exports[name] = funcs[index]
                elif kind == _MEMORY:
                    exports[name] = memories[index]
                elif kind in _OTHER_EXPORTS:  # (no part of the ABI: their types are not read)
                    exports[name] = _OTHER_EXPORTS[kind]
                else:
                    raise Unreadable("export kind not followed")
        else:  # custom, table, global, start, element, code, data, ...: not needed
            r.pos = end
        if r.pos != end:
            raise Unreadable("section size does not match its contents")
    return imports, exports
