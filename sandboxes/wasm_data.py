"""A linked form's data segments, written by the host rather than compiled.

Wasmtime (50) compiles a module's initialisation into a start function of its own when the
module has data segments: three more compile units (that function, its trampoline and a
`memory.copy` builtin), about a third of a small WAT tool's linked-form compile, which is on
its registration's path. The linked form serves a tool only until its whole module (which
keeps its segments, as stored) replaces it, so its plain segments (active, into memory 0, at
an `i32.const` offset) are cut from its bytes here and written by the host into the
library's memory after each instantiation (`put_segments`), each checked against the memory's
size first, as the engine checks them, with the engine's trap when one does not fit. A module
with a start function (which must see its data) or a data count section (code naming
segments: `memory.init`, `data.drop`) is left as it is, and so is any segment of another form.

A linked form with more than `MAX_SEGMENTS` segments, taken over or not, is not served at all
(`data_segments`; the whole module serves from the start): each one taken over is a host
write on every call, on the trio thread, outside the inline slice's wall-time check (43,000
one-byte segments, in a WAT text under the 1 MiB bound, held it 50-90 ms a call), and each
kept is code in the linked form's initialisation function, compiled in the broker's own
process (the library's memory is imported: no memory image; 10,000 segments behind a start
function took 3 s to register, 43,000 about 23 s). The whole module defines its memory, so
wasmtime puts its segments, however many, in that memory's image: no code, no host writes.
"""

from __future__ import annotations

from sandboxes import wasm_ffi as F
from sandboxes.wasm_interface import Reader, Unreadable

# (offset, bytes) in the order the module lists them: the order they are written.
Segments = tuple[tuple[int, bytes], ...]
MAX_SEGMENTS = 64  # most a linked form may have (see the module's note)
_START, _DATA, _DATA_COUNT = 8, 11, 12
_I32_CONST, _END = 0x41, 0x0B
# What the engine reports for a segment that does not fit (the call's error says the same).
OUT_OF_BOUNDS = "wasm trap: out of bounds memory access"


def split_data(wasm: bytes) -> tuple[bytes, Segments] | None:
    """`wasm` without its data section, and that section's segments; None if it has no data
    segments or any that this does not take over (see the module's note). `wasm` is a module
    the caller then compiles: the engine validates what is left."""
    try:
        return _split(wasm)
    except (Unreadable, IndexError):
        return None


def data_segments(wasm: bytes) -> int:
    """How many data segments `wasm` (a module wasmtime validated) lists, of any form; 0 if
    it is unreadable here."""
    try:
        r = Reader(wasm, 8)
        while r.pos < len(wasm):
            section = r.byte()
            end = r.uleb() + r.pos
            if section == _DATA:
                return r.uleb()
            r.pos = end
    except Unreadable:
        pass
    return 0


def _split(wasm: bytes) -> tuple[bytes, Segments] | None:
    r = Reader(wasm, 8)
    found: tuple[int, int, Segments] | None = None
    while r.pos < len(wasm):
        start, section = r.pos, r.byte()
        end = r.uleb() + r.pos
        if section in (_START, _DATA_COUNT) or end > len(wasm):
            return None
        if section == _DATA:
            segments = []
            for _ in range(r.uleb()):
                if r.byte() != 0 or r.byte() != _I32_CONST:  # active, memory 0, a constant
                    return None
                offset = r.sleb() & 0xFFFF_FFFF  # an i32, read by the engine as unsigned
                if r.byte() != _END:
                    return None
                size = r.uleb()
                if r.pos + size > end:
                    return None
                segments.append((offset, wasm[r.pos:r.pos + size]))
                r.pos += size
            if r.pos != end:
                return None
            found = (start, end, tuple(segments))
        r.pos = end
    if found is None or not found[2]:
        return None
    start, end, segments = found
    return wasm[:start] + wasm[end:], segments


def fits(segments: Segments, memory_size: int) -> bool:
    """Whether every segment lies inside a memory of `memory_size` bytes (unbounded
    integers: nothing wraps)."""
    return all(offset + len(data) <= memory_size for offset, data in segments)


def put_segments(ctx: int, memory: object, segments: Segments) -> None:
    """Write `segments` into `memory` as instantiation would: all of them if every one fits,
    else the engine's out-of-bounds trap (the call's store is thrown away either way)."""
    base, size = F.memory_region(ctx, memory)
    if not fits(segments, size):
        raise F.Trapped(None, OUT_OF_BOUNDS)
    for offset, data in segments:
        F.put(base, offset, data)
