"""Python's cyclic garbage collector, while a kernel is open: its youngest generation is
collected every `YOUNG` allocations of containers instead of Python's default 700, and less
often still while many processes run (`PER_PROCESS` allocations for each).

Every process of the broker is a trio task, and each one suspended in a step (waiting for a
group commit, a sandbox, a person) holds the step's objects. A young collection moves every
object it finds alive into an older generation, so with thousands of processes nearly all of a
step's objects reach the oldest one, whose growth sets off full collections of the whole heap
(each process's objects included, with nothing to collect: the broker's garbage is freed by
reference counting). Measured at 10,000 processes, those full collections were about a quarter
of the broker's CPU time. Collecting the young generation less often promotes far fewer
objects. Nothing else changes: cyclic garbage is still collected, a little later.

A fixed threshold is still passed many times over while thousands of processes wait together
for one group commit: each holds about a hundred containers, so 10,000 processes set off about
90 young and 8 middle collections in every round of their steps, finding nothing (measured:
15% of the broker's CPU at 10,000 processes of two steps). So the threshold grows with the
processes the scheduler drives (`running`), counted from the moment it starts a process's
task, not its first run (a host spawning 10,000 in a row, each waiting to run with its
objects, set off young, middle and full collections for about 11% of the spawns' CPU):
`PER_PROCESS` for each, in powers of two times `YOUNG` (set again only when that power
changes). The cyclic garbage it may leave waiting is of the order of what the running
processes hold anyway.

The setting is the interpreter's, so it is raised only while a kernel is open, only when it is
lower and not 0 (an embedder that turned collection off, or set its own larger threshold,
keeps it), never again once the embedder changed it while a kernel was open, and put back when
the last kernel closes if nobody changed it meanwhile (the older generations' thresholds are
the embedder's: changed while a kernel was open, they stay). Kernels open and close in threads
of their own (`KernelThread`): a lock keeps the counts and the setting together (else a kernel
opened as the last other one closes could find the threshold raised, and nobody would put it
back).
"""

from __future__ import annotations

import gc
import threading

YOUNG = 10_000
# Containers a process suspended in a step holds, rounded up (about 90 measured for a step of a
# builtin tool waiting for its group commit).
PER_PROCESS = 128

_lock = threading.Lock()
_open = 0
_running = 0  # processes the schedulers of all open kernels drive
_before: tuple[int, int, int] | None = None  # what it was, if this module raised it
_set = 0  # the young threshold this module set last (while `_before` is not None)
# The counts of running processes `_set` is right for (lowest excluded): a start or an exit
# inside them sets nothing, so it need not look at the setting (two a process).
_keeps: tuple[float, int] = (0, -1)


def opened() -> None:
    global _open, _before, _set
    with _lock:
        _open += 1
        if _open == 1:
            current = gc.get_threshold()
            if 0 < current[0] < YOUNG:
                _before = current
                _set = current[0]
                _apply()


def closed() -> None:
    global _open, _before
    with _lock:
        _open -= 1
        if _open == 0 and _before is not None:
            current = gc.get_threshold()
            if current[0] == _set:  # (older generations the embedder tuned meanwhile stay)
                gc.set_threshold(_before[0], current[1], current[2])
            _before = None


def running(change: int) -> None:
    """A scheduler starts (+1) or stops (-1) driving a process."""
    global _running
    with _lock:
        _running += change
        if _before is not None and not _keeps[0] < _running <= _keeps[1]:
            _apply()


def young_threshold(processes: int) -> int:
    """`YOUNG`, or the least power of two times it that gives each process `PER_PROCESS`."""
    threshold = YOUNG
    while threshold < PER_PROCESS * processes:
        threshold *= 2
    return threshold


def _apply() -> None:
    """Under `_lock`, raised by this module: the threshold for the processes running now,
    unless the embedder set one of its own meanwhile."""
    global _set, _keeps
    current = gc.get_threshold()
    if current[0] != _set:
        return  # the embedder's now
    want = young_threshold(_running)
    if want != current[0]:
        gc.set_threshold(want, current[1], current[2])
        _set = want
    _keeps = kept_by(want)


def kept_by(threshold: int) -> tuple[float, int]:
    """The counts of running processes (lowest excluded) whose `young_threshold` is
    `threshold`, a power of two times `YOUNG`."""
    low = -float("inf") if threshold == YOUNG else threshold // 2 // PER_PROCESS
    return low, threshold // PER_PROCESS
