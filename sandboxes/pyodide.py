"""Python tools in Pyodide, inside the same zero-permission Deno as TypeScript tools.

A Pyodide sandbox IS a Deno sandbox (`sandboxes/deno.py`) running another entry point,
`ts-runtime/pyodide/main.ts`: the same driver, frames, warm pool, watchdog, kill-on-limit and
RLIMIT_DATA cap. What differs goes through the hooks `DenoSandbox` documents:

* **Read access to Pyodide's own assets, and only until they are loaded.** `--deny-read` is
  replaced by `--allow-read=<the Pyodide directory>` (exactly that directory; every other
  `--deny-*` flag stays). The host loads Pyodide (from the memory snapshot `libos setup`
  made beside the assets), then revokes the read permission: tool code runs with nothing
  readable at all. The directory holds the npm package's files and the snapshot, nothing else.
* **Memory.** Python's heap is WebAssembly memory, which V8's heap flag does not bound. The
  host caps its growth at its size after loading plus `memory_mb`: past that, a `MemoryError`
  in Python, and the worn process leaves instead of answering, saying why on stderr, so the
  call gets `LimitExceeded` (as for a WebAssembly stack overflow, which Pyodide cannot survive
  either) and the next call a fresh process. RLIMIT_DATA bounds the whole process: a bomb
  through `js` (a `WebAssembly.Memory`, ArrayBuffers) fails to allocate (`LimitExceeded`).
* **Calls.** A syscall is a synchronous round trip (the host writes the frame and reads stdin
  until the answer), so a plain `def run` gets values without JSPI, and the warm call stays
  close to Pyodide called in-process; an `async def run` makes its syscalls one at a time.
* **Pool key.** A sandbox serves one authority and one tool (by its code hash), not every tool
  of the authority (see `bound_key`).
* **Registration** parses and compiles the tool in Pyodide's own Python (3.14 grammar), never
  running it, and refuses a source without a top-level `def run(args, libos)` /
  `async def run(args, libos)`. A process's tool is checked in the sandbox that will run its
  first call (a spare bound to the call's authority and the tool's code, as `pool_key` binds
  it), which keeps the compiled code for that call; a check that fails kills that sandbox. An
  image's tool (no process yet) is checked in a checker process of its own
  (`ts-runtime/pyodide/check.ts`).

The runtime is fetched once by `libos setup` (`setup()` here): the npm package `pyodide` at
PYODIDE_VERSION, with the ordinary npm client, into `pyodide_dir()`:
`$LIBOS_PYODIDE_DIR` if set, else `~/.cache/libos/pyodide-<version>`. Nothing is fetched at
run time: Deno runs with `--no-remote --no-npm`, and `loadPyodide` gets the local directory as
its index and no packages (the standard library is inside the snapshot / stdlib zip).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.errors import InvalidArgument, LibosError, LimitExceeded, SandboxCrashed
from sandboxes.deno import DenoSandbox
from sandboxes.deno_launch import find_deno
from sandboxes.deno_process import DenoProcess
from sandboxes.pyodide_assets import (  # noqa: F401 - the names this module always offered
    ASSETS,
    PY_CHECK,
    PY_DATA_BASE_MB,
    PY_MAIN,
    PY_RUNTIME,
    PYODIDE_INTEGRITY,
    PYODIDE_VERSION,
    SNAPSHOT,
    SNAPSHOT_MAKER,
    STAMP,
    pyodide_argv,
    pyodide_available,
    pyodide_dir,
    pyodide_flags,
)

log = logging.getLogger("libos.sandboxes.pyodide")

def _progress(text: str) -> None:
    """One progress line, rewritten in place on a terminal; plain lines in a log."""
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text.rstrip("\n"), file=sys.stderr, flush=True)


def setup(directory: Path | None = None, *, force: bool = False, quiet: bool = False,
          progress: Callable[[str], None] | None = None) -> Path:
    """Fetch Pyodide from the npm registry (the ordinary `npm pack`), unpack the files the
    runtime needs into `directory`, and make the memory snapshot. Idempotent: an installed
    runtime is left alone unless `force`. Each step is told to `progress` (by default a line
    on stderr). Returns the directory."""
    d = directory or pyodide_dir()
    say = (lambda text: None) if quiet else progress or _progress
    if pyodide_available(d) and not force:
        if _stamp(d).get("runtime_sha256") != runtime_hash():
            # The libos runtime changed since the snapshot was made: make it again (offline).
            say(f"pyodide {PYODIDE_VERSION}: making the memory snapshot again …")
            (d / SNAPSHOT).unlink()
            (d / STAMP).unlink()
            _snapshot_and_stamp(d)
        make_runtime_template(d)
        say(f"pyodide {PYODIDE_VERSION}: ready in {d}\n")
        return d
    npm = shutil.which("npm")
    if npm is None:
        raise SandboxCrashed("libos setup needs npm (Node.js) to fetch Pyodide")
    d.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="libos-pyodide-", dir=d.parent) as tmp:
        say(f"pyodide {PYODIDE_VERSION}: fetching from the npm registry …")
        out = subprocess.run([npm, "pack", f"pyodide@{PYODIDE_VERSION}", "--silent"],
                             cwd=tmp, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SandboxCrashed(f"npm pack pyodide@{PYODIDE_VERSION} failed: "
                                 f"{out.stderr.strip()[-500:]}")
        tgz = Path(tmp) / out.stdout.strip().splitlines()[-1]
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != PYODIDE_INTEGRITY:
            raise SandboxCrashed(f"pyodide@{PYODIDE_VERSION} from npm is not the pinned tarball "
                                 f"({digest} != {PYODIDE_INTEGRITY})")
        say(f"pyodide {PYODIDE_VERSION}: unpacking {tgz.stat().st_size >> 20} MiB …")
        staging = Path(tmp) / "staging"
        staging.mkdir()
        import tarfile  # (here: only `libos setup` unpacks; a demo imported it for nothing)

        with tarfile.open(tgz) as tar:
            for name in ASSETS:
                member = tar.getmember(f"package/{name}")
                if not member.isfile():
                    raise SandboxCrashed(f"pyodide package: {name} is not a file")
                src = tar.extractfile(member)
                assert src is not None
                with src, open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        version = json.loads((staging / "package.json").read_text())["version"]
        if version != PYODIDE_VERSION:
            raise SandboxCrashed(f"npm gave pyodide {version}, not {PYODIDE_VERSION}")
        say(f"pyodide {PYODIDE_VERSION}: making the memory snapshot …")
        _snapshot_and_stamp(staging)
        if d.exists():
            shutil.rmtree(d)
        staging.rename(d)
    make_runtime_template(d)
    say(f"pyodide {PYODIDE_VERSION}: ready in {d}\n")
    return d


def make_runtime_template(directory: Path) -> None:
    """Make (if missing) the Deno cache template a Pyodide sandbox's service seeds its DENO_DIR
    from (`sandboxes/deno_cache.py`): a service makes it itself when it finds none, by starting
    Pyodide once more in the background, which a short run never lets finish: every `libos
    demo` of a new install started one (about as much CPU as the sandbox it runs), killed it
    when it closed its sandboxes, and started its own Pyodide without the compiled runtime.
    A service opened here makes it, and this waits for it (a failure is logged: it is a cache)."""
    import trio

    from sandboxes import deno_cache

    sandbox = PyodideSandbox(directory=directory, spares=0)
    template = deno_cache.template_dir(sandbox.argv(sandbox.memory_mb, sandbox.runtime))

    async def made() -> None:
        async with sandbox:
            with trio.move_on_after(sandbox.startup_timeout):
                while not template.is_dir():
                    await trio.sleep(0.05)

    if template.is_dir():
        return
    try:
        trio.run(made)
    except Exception as exc:  # a cache only: sandboxes start (slower) without it
        log.warning("the Pyodide sandbox's Deno cache template was not made: %s", exc)


def runtime_hash() -> str:
    """What the snapshot holds besides Pyodide: the libos runtime and the snapshot maker."""
    h = hashlib.sha256()
    for path in (PY_RUNTIME / "errors.gen.py", PY_RUNTIME / "libos.py", SNAPSHOT_MAKER):
        h.update(path.read_bytes())
    return h.hexdigest()


def _stamp(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _snapshot_and_stamp(directory: Path) -> None:
    started = time.monotonic()
    make_snapshot(directory)
    stamp = {"version": PYODIDE_VERSION, "runtime_sha256": runtime_hash(),
             "snapshot_sha256": hashlib.sha256((directory / SNAPSHOT).read_bytes()).hexdigest(),
             "made": time.time(), "snapshot_seconds": round(time.monotonic() - started, 2)}
    (directory / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    for path in directory.iterdir():
        path.chmod(0o444)


def make_snapshot(directory: Path) -> None:
    """Run the snapshot maker in Deno, allowed to read and write that directory only."""
    d = str(directory.resolve())
    with tempfile.TemporaryDirectory(prefix="libos-deno-dir-") as deno_dir:
        out = _run_snapshot_maker(d, deno_dir)
    if out.returncode != 0 or not (directory / SNAPSHOT).is_file():
        raise SandboxCrashed(f"making the Pyodide snapshot failed: {out.stderr.strip()[-800:]}")


def _run_snapshot_maker(d: str, deno_dir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_deno(), "run", "--no-prompt", "--no-remote", "--no-npm", "--no-config",
         "--no-lock", "--quiet", f"--allow-read={d}", f"--allow-write={d}", "--deny-net",
         "--deny-env", "--deny-run", "--deny-ffi", "--deny-sys", "--deny-import",
         str(SNAPSHOT_MAKER), d],
        capture_output=True, text=True, timeout=300, cwd=d,
        env={"NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", "PATH": "/nonexistent",
             "HOME": d, "DENO_DIR": deno_dir})


class PyodideSandbox(DenoSandbox):
    """Python tools (`lang` "python") in Pyodide; see the module docstring.

    `memory_mb` bounds both V8's heap and the growth of Python's heap."""

    kind = "pyodide"
    langs = ("python",)
    check_entry = PY_CHECK
    data_base_mb = PY_DATA_BASE_MB
    check_data_base_mb = PY_DATA_BASE_MB
    checker_per_check = False  # it compiles a tool and never runs it
    # A process's tool is checked (compiled, never run) in the sandbox bound to its authority
    # and code that will run its first call: no checker round trip, no second compile.
    check_in_spare = True
    warms_spares = False  # its runtime has no warm-up
    emit_cache = True  # its host's TypeScript modules, transpiled once (the runtime cache)
    MAX_SOURCE = 1 << 20

    def __init__(self, *, directory: str | Path | None = None, check_timeout: float = 10.0,
                 startup_timeout: float = 30.0, **kw: Any) -> None:
        super().__init__(runtime=PY_MAIN, check_timeout=check_timeout,
                         startup_timeout=startup_timeout, **kw)
        self.directory = Path(directory).resolve() if directory is not None else pyodide_dir()
        if not all((self.directory / name).is_file() for name in ASSETS):
            raise SandboxCrashed(f"Pyodide is not installed in {self.directory}: run "
                                 "`libos setup`")
        if (self.directory / SNAPSHOT).is_file() and \
                _stamp(self.directory).get("runtime_sha256") != runtime_hash():
            log.warning("the Pyodide snapshot in %s predates the libos runtime: sandboxes "
                        "start slower until `libos setup` makes it again", self.directory)

    # -- the Deno driver's hooks -------------------------------------------------------------

    def exit_reason(self, sb: DenoProcess) -> LibosError:
        """A host that ran into a limit it cannot recover from (the Python heap cap, a stack
        overflow in WebAssembly) leaves instead of answering, saying so on stderr: that is the
        call's LimitExceeded. Anything else is judged as for any Deno sandbox."""
        if sb.death is None:
            tail = bytes(sb.stderr_tail[-2000:]).decode(errors="replace")
            found = re.search(r"libos-limit: ([^\n]*)", tail)
            if found:
                return LimitExceeded(found.group(1).strip())
        return super().exit_reason(sb)

    def bound_key(self, authority: str, code_hash: str) -> str:
        """The call's authority and the tool's code. Python cannot hide a running call's
        frames from code that call runs (a function an earlier call planted in the standard
        library, say), so a tool gets sandboxes of its own: code one tool leaves behind never
        runs inside a call of another."""
        return f"{authority}#{code_hash}"

    def argv(self, memory_mb: int, entry: Path) -> list[str]:
        return pyodide_argv(self.deno, memory_mb, self.directory, entry)

    async def prepare(self, name: str, lang: str, source: bytes, *,
                      authority: str | None = None, memory_mb: int | None = None) -> bytes:
        if lang not in self.langs:
            raise InvalidArgument(f"the Pyodide sandbox runs {self.langs}, not {lang!r}")
        if len(source) > self.MAX_SOURCE:
            raise InvalidArgument(f"tool {name}: source larger than {self.MAX_SOURCE} bytes")
        return await super().prepare(name, lang, source, authority=authority,
                                     memory_mb=memory_mb)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="libos setup", description=(
        f"Fetch Pyodide {PYODIDE_VERSION} from the npm registry into {pyodide_dir()} "
        "($LIBOS_PYODIDE_DIR overrides) and make its memory snapshot."))
    parser.add_argument("--force", action="store_true", help="fetch and snapshot again")
    args = parser.parse_args(argv)
    setup(force=args.force)
    return 0


__all__ = ["PYODIDE_VERSION", "PyodideSandbox", "pyodide_available", "pyodide_dir", "setup"]
