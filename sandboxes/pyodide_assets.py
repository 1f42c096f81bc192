"""Where the Pyodide runtime is installed and the command line of a sandbox that runs it.
Without trio or the broker (only where its assets are): `libos demo` starts its Pyodide
sandbox with these before it imports either (`sandboxes/prestart.py`)."""

from __future__ import annotations

import os
from pathlib import Path

from sandboxes.deno_launch import RUNTIME_DIR, deno_flags

PYODIDE_VERSION = "314.0.7"
# The npm tarball's integrity (as the registry publishes it): what `npm pack` fetched is checked
# against it before anything in it is used.
PYODIDE_INTEGRITY = ("sha512-0YvXxEhfEdpLfb/XkM2BFAeMROq0iMUX2bzzH9pOttyMcWkwq+HbE5uyuGD82LN7y2q+"
                     "SNvi/6V5JEsOlD2R1A==")
# The package's files the runtime needs (the rest, HTML consoles and type declarations, are
# left out); the snapshot is made by `libos setup`.
ASSETS = ("package.json", "pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm",
          "python_stdlib.zip", "pyodide-lock.json")
SNAPSHOT = "libos-snapshot.bin"
STAMP = "libos-setup.json"
PY_RUNTIME = RUNTIME_DIR / "pyodide"
PY_MAIN = PY_RUNTIME / "main.ts"
PY_CHECK = PY_RUNTIME / "check.ts"
SNAPSHOT_MAKER = PY_RUNTIME / "snapshot.ts"
# RLIMIT_DATA beyond the call's memory: Deno itself (~600 MiB) plus Pyodide (~100 MiB of
# WebAssembly memory and compiled code) and room for the snapshot while it is restored.
PY_DATA_BASE_MB = 1024


def pyodide_dir() -> Path:
    """Where the Pyodide runtime lives: $LIBOS_PYODIDE_DIR, else the user's cache."""
    env = os.environ.get("LIBOS_PYODIDE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "libos" / f"pyodide-{PYODIDE_VERSION}").resolve()


def pyodide_available(directory: Path | None = None) -> bool:
    """True when `libos setup` has installed the runtime (assets and snapshot) here."""
    d = directory or pyodide_dir()
    return all((d / name).is_file() for name in (*ASSETS, SNAPSHOT, STAMP))


def pyodide_flags(memory_mb: int, directory: Path) -> list[str]:
    """The Deno flags of a Pyodide sandbox: a Deno sandbox's, with `--deny-read` replaced by
    read access to exactly the Pyodide directory."""
    flags = deno_flags(memory_mb)
    i = flags.index("--deny-read")
    flags[i] = f"--allow-read={directory}"
    return flags


def pyodide_argv(deno: str, memory_mb: int, directory: Path, entry: Path) -> list[str]:
    """The whole command line of a Pyodide sandbox running `entry`."""
    return [deno, *pyodide_flags(memory_mb, directory), str(entry), str(directory),
            str(int(memory_mb))]
