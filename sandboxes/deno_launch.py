"""How a Deno sandbox process is launched: its command line, its memory cap, and the private
directories and environment of the service that runs it. Without trio or the broker (only
where its assets are): `libos demo` starts its sandboxes with these before it imports either
(`sandboxes/prestart.py`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker.assets import asset_dir

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux
    resource = None  # type: ignore[assignment]

RUNTIME_DIR = asset_dir("ts-runtime")
MAIN = RUNTIME_DIR / "main.ts"
CHECK = RUNTIME_DIR / "check.ts"

DENY = ("--deny-read", "--deny-write", "--deny-net", "--deny-env", "--deny-run", "--deny-ffi",
        "--deny-sys", "--deny-import")
# What RLIMIT_DATA must leave Deno beyond its heap: it does not start with less than ~600 MiB,
# and the checker, which makes a Worker (another isolate) per check, needs ~1050 MiB.
DATA_BASE_MB = 768
CHECK_DATA_BASE_MB = 1536


def find_deno() -> str:
    from deno import find_deno_bin

    return str(find_deno_bin())


def deno_flags(memory_mb: int) -> list[str]:
    """The `deno run` flags of every sandbox (the entry point goes after them)."""
    return [
        "run",
        "--no-prompt",
        "--no-remote",
        "--no-npm",
        "--no-config",
        "--no-lock",
        "--quiet",
        *DENY,
        f"--v8-flags=--max-old-space-size={int(memory_mb)},"
        "--disallow-code-generation-from-strings",
    ]


def deno_argv(deno: str, memory_mb: int, entry: Path) -> list[str]:
    """The whole command line of a Deno sandbox running `entry`. No V8 code cache: Deno would
    serialize each tool's compiled code into the service's DENO_DIR at every registration,
    keyed by its data: URL (the whole source): about 0.3 ms of the spare's CPU in a
    registration here, while the runtime starts no slower without it."""
    return [deno, *deno_flags(memory_mb), "--no-code-cache", str(entry)]


def limit_memory(pid: int, mb: int) -> None:
    """Cap the process's data segment (RLIMIT_DATA) at `mb` MiB, where the OS allows it."""
    if resource is None or not hasattr(resource, "prlimit"):
        return
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_DATA, (mb << 20, mb << 20))


def rlimit_data_mb(base_mb: int, memory_mb: int) -> int:
    """RLIMIT_DATA of a sandbox whose heap may reach `memory_mb`: what Deno needs beyond it,
    and twice the heap (ArrayBuffers and WebAssembly memory are outside V8's heap cap)."""
    return base_mb + 2 * memory_mb


@dataclass(frozen=True, slots=True)
class ServiceHome:
    """A Deno service's private directories (removed with `tmp` when it closes) and the
    environment its processes get: an empty, unwritable working directory, a DENO_DIR of its
    own, no PATH."""

    tmp: str
    cwd: str
    deno_dir: str
    env: dict[str, str]


def make_home() -> ServiceHome:
    tmp = tempfile.mkdtemp(prefix="libos-deno-")
    cwd = os.path.join(tmp, "cwd")
    os.mkdir(cwd, 0o500)
    deno_dir = os.path.join(tmp, "deno-dir")
    os.mkdir(deno_dir, 0o700)
    env = {"NO_COLOR": "1", "DENO_DIR": deno_dir, "DENO_NO_UPDATE_CHECK": "1",
           "DENO_NO_PROMPT": "1", "HOME": cwd, "PATH": "/nonexistent"}
    return ServiceHome(tmp, cwd, deno_dir, env)
