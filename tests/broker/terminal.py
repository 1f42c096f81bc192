"""Run a command on a real pseudo-terminal (as a person's shell would), and the same command
with its output piped, to test what each of them shows."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from typing import Any

import trio

COLUMNS, ROWS = 120, 40


def run_on_terminal(argv: Sequence[str], env: dict[str, str], *, cwd: str | None = None,
                    timeout: float = 120) -> tuple[int, str]:
    """`argv` with stdin, stdout and stderr on one pseudo-terminal; its exit status and
    everything it wrote there (escape sequences included)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    child = subprocess.Popen(list(argv), stdin=follower, stdout=follower, stderr=follower,
                             env={"TERM": "xterm-256color", **env}, cwd=cwd,
                             start_new_session=True)
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                out += chunk
            elif child.poll() is not None and not select.select([leader], [], [], 0.2)[0]:
                break
        else:
            raise TimeoutError(f"{argv} did not end in {timeout} s")
        return child.wait(timeout=10), out.decode("utf-8", "replace")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)


def run_piped(argv: Sequence[str], env: dict[str, str], *, cwd: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


async def read_until(stream: Any, pattern: bytes, seconds: float = 60) -> bytes:
    """Read a child's output stream until `pattern` (a regex) matches what was read."""
    out = b""
    with trio.fail_after(seconds):
        while not re.search(pattern, out):
            chunk = await stream.receive_some()
            assert chunk, f"the stream ended before {pattern!r}: {out.decode()}"
            out += chunk
    return out


async def read_to_end(stream: Any, seconds: float = 60) -> bytes:
    out = b""
    with trio.fail_after(seconds):
        while chunk := await stream.receive_some(1 << 20):
            out += chunk
    return out
