"""Installs anywhere: a wheel built the way a user or a packager builds it (`python -m build`:
the sdist first, then the wheel from the sdist) carries every file libos reads at run time, and
installed into a fresh virtual environment (a real install with its dependencies, no editable
finder, the source tree nowhere on sys.path) it sets up Pyodide, runs the demo's TypeScript,
WebAssembly and Python tools, and runs a benchmark suite. `pip install .` of a clean clone
builds the same wheel.

Slow by nature (two isolated builds, a fresh environment, a Pyodide snapshot): the fixtures
are shared by the module, and pip's local index and cache make the dependencies quick.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.assets import ASSETS, installed_name
from sandboxes.pyodide import STAMP, pyodide_available, runtime_hash
from tests.pyodide_remade import stale_copy

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("broker", "sandboxes")
NOT_RUN_TIME = ("bench/results/",)  # a benchmark run's output, never in git anyway


def _run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600,
                          **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _clean_clone_files() -> list[str]:
    """The files a clean clone of this working tree holds: tracked and new ones, not ignored."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("builds from a git checkout")
    names = [n for n in listed.decode().split("\0") if n]
    return sorted(n for n in names if (ROOT / n).is_file())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clone = tmp_path_factory.mktemp("clone")
    for name in _clean_clone_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path  # built from the sdist


@pytest.fixture(scope="module")
def dists(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, source])
    [sdist] = out.glob("libos-*.tar.gz")
    [wheel] = out.glob("libos-*.whl")
    return Dists(sdist, wheel)


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if ".dist-info/" not in n}


def test_wheel_carries_every_file_read_at_run_time(dists: Dists) -> None:
    expected = set()
    for name in _clean_clone_files():
        top, _, rest = name.partition("/")
        if top in ASSETS and not name.startswith(NOT_RUN_TIME):
            expected.add(f"broker/_assets/{installed_name(top)}/{rest}")
        elif top in SHIPPED:
            expected.add(name)
    in_wheel = _wheel_names(dists.wheel)
    assert not expected - in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"
    # What the issue names, spelled out: the generated files and the Pyodide host among them.
    assert {"broker/_assets/ts_runtime/main.ts", "broker/_assets/ts_runtime/syscalls.gen.ts",
            "broker/_assets/ts_runtime/main.bundle.js",
            "broker/_assets/ts_runtime/pyodide/host.ts",
            "broker/_assets/ts_runtime/pyodide/errors.gen.py",
            "broker/_assets/wasm_tools/lib.wat", "broker/_assets/wasm_tools/examples/checksum.wat",
            "broker/_assets/bench/__main__.py", "broker/store/migrations/sqlite/0001_initial.sql",
            "broker/store/migrations/postgres/0001_initial.sql"} <= in_wheel
    # Nothing else lands in site-packages: no `tests`, no top-level `bench` or `ts-runtime`.
    assert {n.split("/")[0] for n in in_wheel} == set(SHIPPED)


def test_pip_install_of_a_clean_clone_builds_the_same_wheel(source: Path, dists: Dists,
                                                            tmp_path: Path) -> None:
    """`pip install .` builds its wheel from the tree, not from an sdist: both carry the same."""
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp_path, source])
    [from_tree] = tmp_path.glob("libos-*.whl")
    assert _wheel_names(from_tree) == _wheel_names(dists.wheel)


@dataclass(frozen=True)
class Installed:
    bin: Path
    cwd: Path  # an empty directory: nothing of the source tree importable from it
    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run([self.bin / argv[0], *argv[1:]], cwd=self.cwd, env=self.env)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    # This environment's pip installs into the new one: the wheel and its dependencies, for real
    # (not compiled to bytecode ahead: a thousand files of which the tests import a few).
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
          "--no-compile", dists.wheel])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LIBOS_PYODIDE_DIR")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    return Installed(venv / "bin", tmp_path_factory.mktemp("cwd"), env)


def test_installed_package_reads_its_own_copy(installed: Installed) -> None:
    code = ("import broker, sandboxes.deno_launch as d, sandboxes.wasm_guest as w, "
            "broker.demo_story as demo, broker.benchmarks as b; "
            "print(broker.__file__, d.RUNTIME_DIR, w.LIB_PATH, demo.WASM_TOOLS, b.find().root)")
    site = installed.bin.parent / "lib"
    paths = [Path(p) for p in installed.run("python", "-c", code).stdout.split()]
    assert all(p.is_relative_to(site) and p.exists() for p in paths), paths
    assert not any(p.is_relative_to(ROOT) for p in paths)


@pytest.mark.skipif(not pyodide_available(), reason="Pyodide is not installed: run `libos setup`")
def test_installed_wheel_sets_up_and_runs_the_demo(installed: Installed, tmp_path: Path) -> None:
    # A private copy of this machine's Pyodide, as another libos left it (its snapshot made with
    # another runtime): `libos setup` makes the snapshot again with the wheel's Pyodide host,
    # offline.
    pyodide = stale_copy(tmp_path / "pyodide")
    stamp = pyodide / STAMP
    env = {**installed.env, "LIBOS_PYODIDE_DIR": str(pyodide)}
    setup = _run([installed.bin / "libos", "setup"], cwd=installed.cwd, env=env)
    assert setup.stderr == ""  # piped: no progress, only the result
    assert f"ready in {pyodide}" in setup.stdout
    assert json.loads(stamp.read_text())["runtime_sha256"] == runtime_hash()
    demo = _run([installed.bin / "libos", "demo"], cwd=installed.cwd, env=env).stdout
    assert 'word_count({"path": "/project/README.md"}) → {"words": 12}' in demo  # TypeScript
    assert 'checksum({"path": "/project/README.md"}) → {"bytes": 74' in demo  # WebAssembly
    assert 'summarize({"path": "/project/README.md"}) → {"title": "Quarterly plan"' in demo
    assert "audit chain verified" in demo


HOST_PROGRAM = """
import json, sys
import trio
from broker import AgentImage, HostCall, Kernel, NotCapable, host_tool

@host_tool(kind="ledger", right="post", resource="account", schema={
    "type": "object", "properties": {"account": {"type": "string"}, "cents": {"type": "integer"}},
    "required": ["account", "cents"], "additionalProperties": False})
def post(call: HostCall, account, cents):
    call.state.append([account, cents])
    return {"posted": cents}

async def main():
    book = []
    async with Kernel.open("host.db", host_tools=[post], host_state=book) as kernel:
        await kernel.register_image(AgentImage("clerk", tools=("post",), needs=["ledger:*:post"]))
        pid = kernel.spawn("clerk", caps=["ledger:ops:post"])
        ok = await kernel.call_tool(pid, "post", {"account": "ops", "cents": 5})
        try:
            await kernel.call_tool(pid, "post", {"account": "payroll", "cents": 9})
            denied = None
        except NotCapable as exc:
            denied = exc.code
        print(json.dumps({"ok": ok, "denied": denied, "book": book}))

trio.run(main)
"""


def test_installed_wheel_runs_a_host_tool(installed: Installed) -> None:
    """A program run by the installed Python registers its own function as a host tool, the
    kernel allows one call and refuses one outside the capability, and the installed
    `libos audit --verify` checks the chain that recorded both."""
    (installed.cwd / "host_program.py").write_text(HOST_PROGRAM)
    out = json.loads(installed.run("python", "host_program.py").stdout)
    assert out == {"ok": {"posted": 5}, "denied": "NOT_CAPABLE", "book": [["ops", 5]]}
    verified = installed.run("libos", "--db", "host.db", "audit", "--verify")
    assert "verified" in verified.stdout + verified.stderr


def test_installed_bench_runs_a_suite(installed: Installed) -> None:
    installed.run("libos", "bench", "--only", "inert_bench")
    # No --out: the results go to the caller's directory, not into site-packages.
    results = json.loads((installed.cwd / "libos-bench.json").read_text())
    assert results["inert_bench"]["shown_us.line"] > 0
