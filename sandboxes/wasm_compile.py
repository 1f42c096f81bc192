"""Compiling a module within a time bound.

Cranelift's compile time is not linear in a module's size and cannot be interrupted: 20,000
loops that each touch a local (340 KB) took ~30 s of CPU, and a function may declare 50,000
locals in 3 bytes (100 such functions, 821 bytes, took 0.26 s). A model registers tools, so a
hostile module would hold a broker thread (and a core) for as long as it pleases. Wasmtime's
maintainers' answer is to compile untrusted code in a process of its own; that costs a Python
start (~0.1-0.2 s), which a registration must not pay for the small modules tools are.

So `cost` reads the code section (bounded: one pass over section and function headers) and
weighs each function as its body's bytes plus the locals it declares. A module whose every
function and whose whole code weigh under the bounds (`SMALL_FUNCTION`, `SMALL_CODE`: a
pathological shape that small compiles in well under a second) is compiled here, as before;
any other in a child process (`compile_in_child`) with a CPU limit and a wall deadline, killed
when it is over them (`LimitExceeded`). The child returns the serialized module, which the
engine loads; it is built from the same settings (`engine_config`), so the artefact fits.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import wasmtime

from broker.errors import InvalidArgument, LimitExceeded

# Under these a module compiles in the calling thread: the repo's WAT tools, with the guest
# library, weigh at most 0.5 KB per function and 2.5 KB in all. The worst shape measured (a
# loop per local update) compiled 16 KB in one function in 0.12 s of CPU, so the bound here is
# about half a second.
SMALL_FUNCTION, SMALL_CODE = 16 << 10, 64 << 10
# What a function costs beyond its bytes: it is a compile unit (and, escaping, a trampoline)
# of its own; 32,000 empty ones (2 bytes each) took 2.4 s of CPU, 5 s escaping (~150 us).
PER_FUNCTION = 32
# And each function type (a trampoline's unit): 12,800 distinct types of 5 values, weighed 5
# each (64,000), took 0.9 s of CPU.
PER_TYPE = 8
# And each data or element segment: a module whose memory is imported (a binary tool's from
# the guest library, or a WAT tool's linked form) has its data initialised by a function
# wasmtime compiles, a part each (20,000 one-byte segments took 2.4 s of CPU, 43,000 about
# 19 s), and so are element segments given as expressions (99,000 took 4.5 s); a module
# whose memory is its own has its data in an image, but is weighed alike (`cost` does not
# follow the import section), so one with over ~2,000 segments pays a child's start.
PER_SEGMENT = 32
# A compile child's data (heap and thread stacks; its address space is not limited: wasmtime
# reserves more than it uses). A hostile 935 KB module reached 438 MB of RSS within 5 s of
# CPU; the repo's largest tool compiles in ~60 MB. And how many children compile at once:
# each may take a core and `CHILD_MEMORY`, and a model can register many modules.
CHILD_MEMORY = 1 << 30
_CHILDREN = threading.BoundedSemaphore(2)
# Compiles again after a child a SIGINT ended (below); a second such end is reported.
SIGINT_RETRIES = 1
_ROOT = Path(__file__).resolve().parents[1]
# Isolated (-I): the child imports `wasm_config` (wasmtime alone) from the broker's own tree.
_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from sandboxes.wasm_config import child_main; child_main()")


class _Malformed(Exception):
    pass


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 (at most 5 bytes, a u32) at `pos`: its value and the next position."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise _Malformed


# The value types a function type may name with the engine's features (numbers, v128,
# funcref, externref): one byte each. Any other (a GC or typed reference) is not followed.
_VALUE_TYPES = frozenset(b"\x7f\x7e\x7d\x7c\x7b\x70\x6f")


def _arities(wasm: bytes, pos: int, end: int) -> list[int]:
    """The type section's function types, each as its parameters + results."""
    count, pos = _leb(wasm, pos)
    arities = []
    for _ in range(count):
        if wasm[pos] != 0x60:
            raise _Malformed
        arity, pos = 0, pos + 1
        for _ in range(2):  # params, results
            n, pos = _leb(wasm, pos)
            if not set(wasm[pos:pos + n]) <= _VALUE_TYPES or pos + n > end:
                raise _Malformed
            arity, pos = arity + n, pos + n
        arities.append(arity)
    if pos != end:
        raise _Malformed
    return arities


def cost(wasm: bytes) -> tuple[int, int] | None:
    """The weight of the module's heaviest function and of the whole module; None if the bytes
    are not a module this reader follows. A function weighs its body's bytes, the locals it
    declares, its type's parameters and results and `PER_FUNCTION`; the module, its functions,
    every type's parameters and results, and `PER_SEGMENT` a data or element segment.
    Wasmtime compiles a trampoline per type and per escaping function, each copying the
    type's values (up to 1,000): 1,000 empty functions of a 1,000-parameter type, 6.9 KB,
    took 15.7 s of CPU."""
    try:
        pos, heaviest, total, arities, types = 8, 0, 0, [], []
        while pos < len(wasm):
            section = wasm[pos]
            size, pos = _leb(wasm, pos + 1)
            end = pos + size
            if end > len(wasm):
                raise _Malformed
            if section == 1:
                arities = _arities(wasm, pos, end)
                total += sum(arities) + PER_TYPE * len(arities)
            elif section == 3:  # function: a vector of type indices
                count, at = _leb(wasm, pos)
                for _ in range(count):
                    index, at = _leb(wasm, at)
                    types.append(arities[index])
                if at != end:
                    raise _Malformed
            elif section == 10:  # code: a vector of (size, locals, instructions)
                count, at = _leb(wasm, pos)
                if count != len(types):
                    raise _Malformed
                for arity in types:  # one-byte numbers read inline: most are
                    body, at = (wasm[at], at + 1) if wasm[at] < 0x80 else _leb(wasm, at)
                    next_body = at + body
                    groups, at = (wasm[at], at + 1) if wasm[at] < 0x80 else _leb(wasm, at)
                    weight = body + arity + PER_FUNCTION
                    for _ in range(groups):  # (count, type)
                        locals_, at = (wasm[at], at + 1) if wasm[at] < 0x80 else _leb(wasm, at)
                        weight, at = weight + locals_, at + 1
                        if at > next_body:
                            raise _Malformed
                    if at > next_body or next_body > end:
                        raise _Malformed
                    total, at = total + weight, next_body
                    if weight > heaviest:
                        heaviest = weight
                if at != end:
                    raise _Malformed
            elif section in (9, 11):  # element, data: a vector of segments
                total += PER_SEGMENT * _leb(wasm, pos)[0]
            pos = end
        return heaviest, total
    except (_Malformed, IndexError):
        return None


def is_small(wasm: bytes) -> bool:
    weights = cost(wasm)
    return weights is not None and weights[0] <= SMALL_FUNCTION and weights[1] <= SMALL_CODE


def _run_child(wasm: bytes, bounds: list[str], *, timeout: float
               ) -> tuple[subprocess.Popen[bytes], bytes | None]:
    """One compile child, given `wasm` on its stdin: the ended child and what it wrote."""
    with _CHILDREN:
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD, str(_ROOT), *bounds],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: a Ctrl-C there is the command's to take
            # (`broker.command_trio`); ending the child with it made its failure a
            # LimitExceeded beside the Ctrl-C, reported as a failure (exit 2) for a Ctrl-C
            # alone. Cranelift would not stop for it anyway; the child is killed or waited
            # for below, as ever, and its CPU is bounded if the broker dies.
            start_new_session=True)
        try:
            out, _ = child.communicate(wasm, timeout=timeout)
        except subprocess.TimeoutExpired:
            out = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
    return child, out


def compile_in_child(engine: wasmtime.Engine, wasm: bytes, *, max_wasm_stack: int,
                     seconds: float, memory: int = CHILD_MEMORY) -> wasmtime.Module:
    """`wasm` compiled in a child process given `seconds` of CPU (and four times that of wall
    time on a busy machine) and `memory` bytes of data (RLIMIT_DATA: its heap, its threads'
    stacks), and loaded into `engine`: `LimitExceeded` when it is over either, the child
    killed (or aborted by its failed allocation); `InvalidArgument` when wasmtime refuses the
    module. At most `CHILDREN` compile at once; a further one waits for its turn."""
    limit = max(1, int(seconds + 0.999))  # whole seconds: what RLIMIT_CPU counts
    for _ in range(1 + SIGINT_RETRIES):
        child, out = _run_child(wasm, [str(max_wasm_stack), str(limit), str(memory)],
                                timeout=4 * seconds + 2)
        # A terminal's Ctrl-C that came between the child's fork and its setsid (it was still
        # in the terminal's group) ended it before the compile began: not the module's doing,
        # so it is compiled again rather than reported as over its bounds.
        if child.returncode != -signal.SIGINT:
            break
    if child.returncode != 0 or not out:
        raise LimitExceeded(f"module did not compile within {seconds:g} s of CPU and "
                            f"{memory >> 20} MiB of memory")
    status, _, body = out.partition(b"\n")
    if status != b"ok":
        raise InvalidArgument(f"invalid module: {json.loads(body)[:1000]}")
    return wasmtime.Module.deserialize(engine, body)
