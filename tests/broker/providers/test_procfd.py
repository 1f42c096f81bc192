"""`broker/providers/procfd.py`: an O_PATH descriptor reopened is the very inode it refers
to, whatever its name leads to by then; and a forked child reopens its own descriptors, not
its parent's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.providers import procfd
from tests.broker.providers.one_descriptor_left import one_descriptor_left

pytestmark = pytest.mark.skipif(procfd.fd_dir() is None, reason="no procfs here")


def test_a_reopen_is_the_inode_not_the_name(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("checked")
    (tmp_path / "g").write_text("swapped in")
    pfd = os.open(tmp_path / "f", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.replace(tmp_path / "g", tmp_path / "f")  # the name now leads elsewhere
        fd = procfd.reopen(pfd, os.O_RDONLY | os.O_NOFOLLOW, procfd.fd_dir())  # type: ignore
        try:
            assert os.read(fd, 100) == b"checked"
        finally:
            os.close(fd)
    finally:
        os.close(pfd)


FORKED = """
import os, sys
from broker.providers import procfd
where = procfd.fd_dir()  # pinned by the parent
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    for fd in range(3, 200):  # a number the parent has free, its own file in the child
        try:
            os.fstat(fd)
        except OSError:
            break
    os.dup2(os.open(sys.argv[1], os.O_PATH | os.O_CLOEXEC), fd)
    with os.fdopen(procfd.reopen(fd, os.O_RDONLY, procfd.fd_dir()), "rb") as f:
        os.write(w, f.read())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print(os.read(r, 100).decode())
"""


def test_a_forked_child_reopens_its_own_descriptors(tmp_path: Path) -> None:
    (tmp_path / "child.txt").write_text("the child's file")
    done = subprocess.run([sys.executable, "-c", FORKED, str(tmp_path / "child.txt")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert done.stdout.strip() == "the child's file", done.stderr


PIN_OUT_OF_DESCRIPTORS = one_descriptor_left(
    "from broker.providers import procfd", "procfd.fd_dir()",
    '"after": procfd.fd_dir() is not None')


def test_running_out_of_descriptors_while_pinning_is_not_a_no_for_good() -> None:
    """EMFILE while /proc/self/fd is pinned says nothing of procfs: "not now", and once
    descriptors are back the next open pins it (not the reopen by name, FIFOs woken by a
    swap, for the life of the process: a process that can exhaust the broker's descriptors
    for a moment must not downgrade it for good)."""
    done = subprocess.run([sys.executable, "-c", PIN_OUT_OF_DESCRIPTORS], check=True,
                          capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert json.loads(done.stdout) == {"first": None, "after": True}
