"""A Deno service's private DENO_DIR, seeded with what Deno made of the runtime alone.

Each Deno service runs its sandboxes with a DENO_DIR of its own, removed when it closes: Deno
writes the code it compiles there, a tool's too (a `data:` URL's transpiled source in `gen/`),
so a shared one would keep tools' sources on disk. A fresh one costs every service's first
sandbox the runtime's transpiling and V8's code cache (about 35 ms of CPU of a 90 ms start
here). So a template is made once per Deno build, command line and runtime source: a run of
the runtime with no tool at all (its stdin closed, it exits), in the user's cache directory;
each service copies it into its private DENO_DIR before its first sandbox starts (its compiled
modules are linked, see `_link_or_copy`). The template
holds the runtime's compiled files and Deno's module-analysis caches only; Deno checks each
cached file against its source, so a stale template costs time, never correctness. (The Deno
sandboxes' runtime is one bundled JavaScript file, `ts-runtime/main.bundle.js`: nothing to
transpile, so its template holds the analysis caches alone, which still save about 19 M of a
start's 116 M instructions. The Pyodide host's modules are compiled and linked as above.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from sandboxes.deno_launch import RUNTIME_DIR


def _warn(message: str, *args: object) -> None:
    """A warning of the Deno drivers' logger (`logging` imported only then: `libos demo`
    starts its sandboxes with this module before the CLI imports it)."""
    import logging

    logging.getLogger("libos.sandboxes.deno").warning(message, *args)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "libos" / "deno-runtime"


@cache
def _sources_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".ts", ".js", ".mjs") and path.is_file():
            digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def template_dir(argv: Sequence[str], root: Path | None = None) -> Path:
    """Where the template for this command line lives (the Deno binary's identity, every flag
    and argument, and the source of the entry point's directory and the shared runtime's)."""
    deno = Path(argv[0])
    entry = next((Path(a) for a in argv[1:] if a.endswith((".ts", ".js"))), None)
    stat = deno.stat()
    key = hashlib.sha256("\0".join([
        str(deno), str(stat.st_size), str(stat.st_mtime_ns), *argv[1:],
        _sources_digest(entry.parent.resolve()) if entry is not None else "",
        _sources_digest(RUNTIME_DIR),
    ]).encode()).hexdigest()[:24]
    return (root or cache_root()) / key


def seed(deno_dir: str, template: Path) -> bool:
    """Copy the template (if there is one, this user's alone) into a new private DENO_DIR."""
    if not (_ours_alone(template.parent) and _ours_alone(template)):
        return False
    try:
        shutil.copytree(template, deno_dir, dirs_exist_ok=True, symlinks=True,
                        copy_function=_link_or_copy, ignore=_not_cached_code)
    except OSError as exc:
        _warn("cannot seed the Deno cache from %s: %s", template, exc)
        return False
    return True


def _ours_alone(path: Path) -> bool:
    """A directory (not a link) that only this user may write. Deno runs the compiled files
    it finds in a DENO_DIR (their check is an unkeyed checksum), so a template others may
    write, or put in place, would run their code in every sandbox of every authority."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return True
    _warn("not seeding the Deno cache from %s: not a directory this user alone may "
                "write (mode %03o, owner %d)", path, st.st_mode & 0o777, st.st_uid)
    return False


def _link_or_copy(src: str, dst: str) -> None:
    """A compiled module (`gen/**.js`) is linked, not copied (a seed is on the way to a
    service's first sandbox: copies cost 2-15 ms here, links a tenth of that): Deno replaces a
    cache file whole (a new file renamed over it), never writes into one, so what a service's
    sandboxes do leaves the template's as it was. SQLite's databases are written in place: they
    are copied. (Another file system: copied too.)"""
    if src.endswith(".js"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _not_cached_code(directory: str, names: list[str]) -> set[str]:
    """Only the compiled files and the caches' databases: not Deno's `node` link to its own
    binary, the (empty) npm directory or a database's shared-memory index."""
    return {n for n in names if n in ("node_compat_bin", "npm") or n.endswith("-shm")}


async def make_template(argv: Sequence[str], env: dict[str, str], cwd: str, template: Path,
                        timeout: float) -> None:
    """Run the runtime once with no tool, in a DENO_DIR of its own, and keep that as the
    template (atomically: a rename; whoever renames first wins)."""
    import trio  # here: the rest of this module runs before trio is imported (`prestart`)

    template.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = tempfile.mkdtemp(prefix=f".{template.name}.", dir=template.parent)
    try:
        with trio.move_on_after(timeout):
            done = await trio.run_process(list(argv), stdin=subprocess.DEVNULL,
                                          capture_stdout=True, capture_stderr=True,
                                          env={**env, "DENO_DIR": tmp}, cwd=cwd, check=False)
            if done.returncode == 0 and done.stdout:
                with contextlib.suppress(OSError):  # another broker made it first
                    os.rename(tmp, template)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, tmp, True)
