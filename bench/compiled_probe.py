"""What compiling the kernel's hot, unmodified Python modules to C extensions (Cython 3, pure
Python mode; or mypyc) would buy (issue #17): an A/B, alternated, of the same measurements
with and without the compiled modules, each run in a process of its own.

    python -m bench.compiled_probe build /tmp/so           # Cython: the `wide` set into /tmp/so
    python -m bench.compiled_probe build /tmp/so --set core
    python -m bench.compiled_probe build /tmp/myc --mypyc --set small
    python -m bench.compiled_probe ab /tmp/so --turns 5    # A (pure Python) / B (compiled)
    python -m bench.compiled_probe crash                   # Cython's miscompilation (below)
    python bench/compiled_probe.py one /tmp/so steps       # one measurement (B; `-` for A)
    python bench/compiled_probe.py pytest /tmp/so tests/broker/kernel -q   # tests against B

Nothing is built in the source tree: `build` writes the extensions to a directory of their
own, and a measurement given that directory imports the listed modules from it (a finder
put first on `sys.meta_path` before `broker` is imported), the rest from the source as
usual; `pytest` runs tests so (a broker a test starts in a child process is not compiled).

Measured, each the trio thread's CPU (`time.thread_time`), the machine being shared:
`steps`, a scheduler step at 100 processes x 60 steps (`kernel_bench.scheduler_steps_per_s`,
a warm-up round first, as README's account); `read` / `tool` / `wasm`, a warm audited
`fs.read`, `call_tool("read_file")` and a WASM tool's call with its sandbox stubbed, CPU per
call (`call_ablation`'s `whole`); `round`, the report's WASM round (wall time medians:
the kernel's call over an Extism fresh plugin's).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Hot in a step's, a read's or a WASM call's cProfile (by the module's own time).
CORE = ("broker/kernel/dispatch.py", "broker/kernel/scheduler.py",
        "broker/kernel/group_commit.py", "broker/kernel/checkpoint_text.py",
        "broker/json_text.py", "broker/store/audit.py", "broker/store/chain.py",
        "broker/caps/table.py", "broker/syscalls/fs.py", "broker/syscalls/context.py")
WIDE = (
    *CORE,
    "broker/kernel/summary.py", "broker/kernel/held_call.py", "broker/kernel/audit_detail.py",
    "broker/kernel/tools.py", "broker/kernel/budgets.py", "broker/kernel/label_flow.py",
    "broker/kernel/too_deep.py", "broker/kernel/invocation.py", "broker/kernel/read_commit.py",
    "broker/kernel/process.py", "broker/kernel/tool_plans.py", "broker/kernel/history.py",
    "broker/kernel/embedding_api.py", "broker/kernel/slots.py", "broker/kernel/recovery.py",
    "broker/store/durable.py", "broker/store/connection.py", "broker/store/audit_rows.py",
    "broker/store/vouch.py", "broker/store/labels.py", "broker/store/anchor.py",
    "broker/store/links.py", "broker/store/keys.py", "broker/store/label_ceiling.py",
    "broker/caps/paths.py", "broker/caps/proof.py", "broker/syscalls/tool.py",
    "broker/syscalls/table.py", "broker/syscalls/clock.py", "broker/providers/beneath.py",
    "broker/providers/fs.py", "broker/providers/clock.py")
SMALL = ("broker/json_text.py", "broker/kernel/checkpoint_text.py")  # mypyc's try
SETS = {"core": CORE, "wide": WIDE, "small": SMALL}
KINDS = ("steps", "read", "tool", "wasm", "round")
ROOT = Path(__file__).resolve().parent.parent
# Cython 3.3.1 miscompiles this shape (`AuditChain._appending`'s): it releases the loop's
# iterator before the `with` block's `__exit__` runs, and an exception that `__exit__` raises
# (a commit refused) and the `try` catches goes round the loop with none: a segfault.
CRASH = """
class Moved(Exception):
    pass

class Refusing:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        raise Moved

def appending(tries):  # (a literal count would be a C loop, no iterator)
    for _ in range(tries):
        try:
            with Refusing():
                return "made"
        except Moved:
            pass
    return "refused three times"
"""


def build(out: Path, files: tuple[str, ...], mypyc: bool) -> None:
    """The extensions of `files` into `out` (by package path), their C and objects in
    `out/tmp`; the source tree untouched."""
    from setuptools import setup

    if mypyc:
        from mypyc.build import mypycify
        # (the imported modules checked, their errors not reported: mypyc refuses a module
        # whose own types do not check, and by default the modules it imports too)
        modules = mypycify(["--follow-imports=silent", "--ignore-missing-imports", *files],
                           opt_level="3")
    else:
        from Cython.Build import cythonize
        modules = cythonize(list(files), language_level=3, quiet=True,
                            build_dir=str(out / "tmp" / "c"),
                            compiler_directives={"annotation_typing": False})
    setup(name="compiled-probe", ext_modules=modules, packages=[], py_modules=[], script_args=[
        "build_ext", "--build-lib", str(out), "--build-temp", str(out / "tmp"), "-j", "2"])


def crash() -> int:
    """`CRASH` compiled by Cython and called, in a process of its own: its exit status (pure
    Python prints "refused three times")."""
    with tempfile.TemporaryDirectory(prefix="libos-cython-crash-") as tmp:
        Path(tmp, "crash_shape.py").write_text(CRASH)
        subprocess.run([sys.executable, "-m", "Cython.Build.Cythonize", "-q", "-i", "-3",
                        "crash_shape.py"], cwd=tmp, check=True, capture_output=True)
        return subprocess.run([sys.executable, "-c", "import crash_shape; "
                               "print(crash_shape.appending(3))"], cwd=tmp).returncode


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds a module for which `directory` holds an extension (`broker/x/y.cpython-...so`
    for `broker.x.y`), so that the rest of the package comes from the source tree."""

    def __init__(self, directory: Path) -> None:
        self.found: dict[str, Path] = {}
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's own
        for path in directory.rglob(f"*{suffix}"):
            if "tmp" not in path.relative_to(directory).parts:
                parts = path.relative_to(directory).with_name(path.name[:-len(suffix)])
                self.found[".".join(parts.parts)] = path
        # A bisection's help (module name prefixes, comma-separated): COMPILED_ONLY, the
        # only ones taken compiled; COMPILED_SKIP, those taken from the source anyway.
        only, skipped = (tuple(filter(None, os.environ.get(name, "").split(",")))
                         for name in ("COMPILED_ONLY", "COMPILED_SKIP"))
        self.found = {n: p for n, p in self.found.items() if (not only or n.startswith(only))
                      and not (skipped and n.startswith(skipped))}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        so = self.found.get(fullname)
        if so is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(so))
        return importlib.util.spec_from_file_location(fullname, so, loader=loader)


async def steps_cpu(processes: int = 100, steps: int = 60) -> dict[str, float]:
    """The trio thread's CPU and wall time a step, after a warm-up round of the same."""
    from bench.kernel_bench import scheduler_steps_per_s
    from broker import AgentImage, Kernel

    with tempfile.TemporaryDirectory(prefix="libos-compiled-") as tmp:
        async with Kernel.open(Path(tmp) / "k.db") as kernel:
            await kernel.register_image(AgentImage("b", tools=("now",),
                                                   needs=("clock:*:read",)))
            await scheduler_steps_per_s(kernel, "b", processes, steps)
            cpu = time.thread_time()
            rate = await scheduler_steps_per_s(kernel, "b", processes, steps)
            cpu = time.thread_time() - cpu
    return {"cpu_us": cpu / (processes * steps) * 1e6, "steps_per_s": rate}


def one(kind: str) -> dict[str, float]:
    """One measurement in this process (the finder, if any, already installed)."""
    import trio

    if kind == "steps":
        return trio.run(steps_cpu)
    if kind == "round":
        from bench.call_ablation import in_round
        found = in_round("whole", 1000)
        return {"kernel_us": found["kernel"],
                "over_extism_fresh": found["kernel"] / found["extism_fresh"]}
    from bench.call_ablation import one as ablated
    return {"cpu_us": trio.run(ablated, kind, "whole", True)}


def _run(so: str, kind: str) -> dict[str, float]:
    # As a script, not `-m`: the `bench` package imports `broker`, before the finder is in.
    out = subprocess.run([sys.executable, __file__, "one", so, kind],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def ab(so: Path, kinds: list[str], turns: int) -> None:
    """A (pure Python) and B (`so`'s modules compiled), alternated, `turns` times each
    (A first on even turns, B first on odd ones)."""
    found: dict[tuple[str, str], list[dict[str, float]]] = {}
    for turn in range(turns):
        for kind in kinds:
            order = ("-", str(so)) if turn % 2 == 0 else (str(so), "-")
            for side in order:
                name = "A" if side == "-" else "B"
                found.setdefault((kind, name), []).append(_run(side, kind))
        print(f"turn {turn + 1} done", file=sys.stderr)
    print(f"A: pure Python; B: compiled ({so}); {turns} turns, alternated")
    for kind in kinds:
        a, b = found[(kind, "A")], found[(kind, "B")]
        for key in a[0]:
            xs, ys = [r[key] for r in a], [r[key] for r in b]
            ratios = sorted(y / x for x, y in zip(xs, ys, strict=True))
            print(f"  {kind:5} {key:17} A {statistics.median(xs):9.2f} "
                  f"[{min(xs):.2f}-{max(xs):.2f}]  B {statistics.median(ys):9.2f} "
                  f"[{min(ys):.2f}-{max(ys):.2f}]  B/A {statistics.median(ratios):.3f} "
                  f"[{ratios[0]:.3f}-{ratios[-1]:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("build")
    made.add_argument("out", type=Path)
    made.add_argument("--set", choices=sorted(SETS), default="wide")
    made.add_argument("--mypyc", action="store_true")
    measured = sub.add_parser("one")
    measured.add_argument("so")
    measured.add_argument("kind", choices=KINDS)
    tested = sub.add_parser("pytest")
    tested.add_argument("so")
    tested.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("crash", help="Cython's miscompilation of `_appending`'s shape")
    compared = sub.add_parser("ab")
    compared.add_argument("so", type=Path)
    compared.add_argument("kinds", nargs="*", default=list(KINDS))
    compared.add_argument("--turns", type=int, default=3)
    options = parser.parse_args()
    if options.command == "crash":
        print(f"exit status {crash()}")
    elif options.command == "build":
        build(options.out.resolve(), SETS[options.set], options.mypyc)
    elif options.command in ("one", "pytest"):
        if "broker" in sys.modules:
            sys.exit(f"run `{options.command}` as a script (python bench/compiled_probe.py)")
        finder = CompiledFinder(Path(options.so)) if options.so != "-" else None
        if finder is not None:
            sys.meta_path.insert(0, finder)
        sys.path[0] = str(ROOT)  # (the script's directory, bench/, is not a package root)
        if options.command == "pytest":  # (a broker in a child process is not compiled)
            import pytest
            sys.exit(pytest.main(options.args))
        result = one(options.kind)
        if finder is not None:  # each listed module was imported from its extension
            result["compiled"] = sum(str(getattr(sys.modules.get(name), "__file__", ""))
                                     == str(path) for name, path in finder.found.items())
        print(json.dumps(result))
    else:
        ab(options.so, options.kinds, options.turns)


if __name__ == "__main__":
    main()
