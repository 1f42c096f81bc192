"""Python's cyclic garbage collector, while a kernel is open: its youngest generation is
collected every `YOUNG` allocations of containers instead of Python's default 700.

Every process of the broker is a trio task, and each one suspended in a step (waiting for a
group commit, a sandbox, a person) holds the step's objects. A young collection moves every
object it finds alive into an older generation, so with thousands of processes nearly all of a
step's objects reach the oldest one, whose growth sets off full collections of the whole heap
(each process's objects included, with nothing to collect: the broker's garbage is freed by
reference counting). Measured at 10,000 processes, those full collections were about a quarter
of the broker's CPU time. Collecting the young generation less often promotes far fewer
objects. Nothing else changes: cyclic garbage is still collected, a little later.

The setting is the interpreter's, so it is raised only while a kernel is open, only when it is
lower and not 0 (an embedder that turned collection off, or set its own larger threshold,
keeps it), and put back when the last kernel closes if nobody changed it meanwhile (the
older generations' thresholds are the embedder's: changed while a kernel was open, they stay).
Kernels open and close in threads of their own (`KernelThread`): a lock keeps the count and
the setting together (else a kernel opened as the last other one closes could find the
threshold raised, and nobody would put it back).
"""

from __future__ import annotations

import gc
import threading

YOUNG = 10_000

_lock = threading.Lock()
_open = 0
_before: tuple[int, int, int] | None = None  # what it was, if this module raised it


def opened() -> None:
    global _open, _before
    with _lock:
        _open += 1
        if _open == 1:
            current = gc.get_threshold()
            if 0 < current[0] < YOUNG:
                _before = current
                gc.set_threshold(YOUNG, current[1], current[2])


def closed() -> None:
    global _open, _before
    with _lock:
        _open -= 1
        if _open == 0 and _before is not None:
            current = gc.get_threshold()
            if current[0] == YOUNG:  # (older generations the embedder tuned meanwhile stay)
                gc.set_threshold(_before[0], current[1], current[2])
            _before = None
