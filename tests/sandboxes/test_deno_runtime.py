"""The TypeScript runtime itself: the shared frame vectors checked by its codec (a Deno test,
run from here so CI runs it), its type-check, what is generated from the broker's source (the
`libos` stubs from the one syscall table, the typed errors, the protocol limits), and the Deno
flags every sandbox runs with."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from broker.errors import ERRORS
from broker.protocol.limits import DEFAULT_LIMITS, Limits
from broker.syscalls import describe
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import CHECK, MAIN, RUNTIME_DIR, DenoSandbox, deno_flags, find_deno
from sandboxes.testing import NullHost

ROOT = Path(__file__).resolve().parents[2]
TS_FILES = sorted(p.name for p in RUNTIME_DIR.glob("*.ts"))
_spec = importlib.util.spec_from_file_location("ts_runtime_generate", RUNTIME_DIR / "generate.py")
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def deno(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"NO_COLOR": "1", "DENO_DIR": str(tmp / "deno-dir"), "DENO_NO_UPDATE_CHECK": "1",
           "PATH": os.environ.get("PATH", "")}
    return subprocess.run([find_deno(), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_the_typescript_codec_passes_the_shared_vectors(tmp_path: Path) -> None:
    out = deno("test", "--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock",
               "ts-runtime/frames_test.ts", tmp=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " 0 failed" in out.stdout


def test_the_runtime_type_checks(tmp_path: Path) -> None:
    out = deno("check", "--no-remote", "--no-npm", "--no-config", "--no-lock",
               *(f"ts-runtime/{name}" for name in TS_FILES), tmp=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_runtime_imports_nothing_it_does_not_ship() -> None:
    for name in TS_FILES:
        text = (RUNTIME_DIR / name).read_text()
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "export ")) and " from " in stripped:
                spec = stripped.split(" from ", 1)[1].strip().strip(";").split()[0].strip("\"'")
                assert spec.startswith("./") or spec.startswith("../tests/vectors/"), (
                    f"{name} imports {spec}")
        assert not re.search(r"""import\(\s*["'`](npm|jsr|node|https?|file):""", text), name


def test_the_generated_files_match_the_broker_source() -> None:
    """The syscall stubs, the error classes (TypeScript and Pyodide-side Python) and the
    protocol limits are generated from the broker's source; the committed files are fresh."""
    out = subprocess.run([sys.executable, "ts-runtime/generate.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(generate.OUTPUTS) == {RUNTIME_DIR / "syscalls.gen.ts", RUNTIME_DIR / "errors.gen.ts",
                                     RUNTIME_DIR / "limits.gen.ts",
                                     RUNTIME_DIR / "pyodide" / "errors.gen.py"}


def test_a_stale_generated_file_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path, render in list(generate.OUTPUTS.items()):
        copy = tmp_path / path.name
        monkeypatch.setattr(generate, "OUTPUTS", {copy: render})
        assert generate.stale() == [copy]  # missing
        copy.write_text(render())
        assert generate.stale() == []
        copy.write_text(render().replace("16777216", "16777215").replace(
            "NOT_CAPABLE", "NOT_CAPABLE2").replace("clock.now", "clock.later"))
        assert generate.stale() == [copy], path.name


def test_the_generated_files_say_what_the_python_source_says() -> None:
    """Read back from the generated text: every typed error with its wire code, and every
    protocol bound with its default (so the generator itself cannot drop one)."""
    ts_errors = (RUNTIME_DIR / "errors.gen.ts").read_text()
    py_errors = (RUNTIME_DIR / "pyodide" / "errors.gen.py").read_text()
    for code, cls in ERRORS.items():
        assert (f"export class {cls.__name__} extends LibosError {{\n"
                f"  static override readonly code = \"{code}\";") in ts_errors
        assert f"class {cls.__name__}(LibosError):" in py_errors
        assert f'    code = "{code}"' in py_errors
    limits = (RUNTIME_DIR / "limits.gen.ts").read_text()
    for f in fields(Limits):
        assert f"  {f.name}: {getattr(DEFAULT_LIMITS, f.name)},\n" in limits


async def test_libos_has_a_wrapper_for_every_syscall_and_no_other() -> None:
    source = """export default async function run(args: unknown, libos: any) {
  const names: string[] = [];
  for (const family of Object.keys(Object.getPrototypeOf(libos))) {
    const ns = libos[family];
    if (typeof ns !== "object" || ns === null || family === "errors") continue;
    for (const op of Object.keys(ns)) {
      if (typeof ns[op] === "function") names.push(`${family}.${op}`);
    }
  }
  return names.sort();
}"""
    async with DenoSandbox(spares=0) as sandbox:
        code = ToolCode("t", "ts", source.encode(), "h")
        names = await sandbox.call(code, {}, NullHost(), CallLimits())
    assert names == sorted(d["name"] for d in describe())


async def test_microtasks_and_message_ports_work_in_the_hardened_realm() -> None:
    """Deno captures its native queueMicrotask on first use by deleting it from an internal
    object, which lockdown had frozen: a tool's queueMicrotask (and every message port, the
    runtime's own check among them) threw. The runtime makes that capture before lockdown."""
    source = """export default async function run() {
  const micro = await new Promise((r) => queueMicrotask(() => r("micro")));
  const c = new MessageChannel();
  const port = await new Promise((r) => {
    c.port1.onmessage = (e: MessageEvent) => r(e.data);
    c.port2.postMessage("port");
  });
  c.port1.close();
  return [micro, port];
}"""
    async with DenoSandbox(spares=0) as sandbox:
        code = ToolCode("t", "ts", source.encode(), "h")
        assert await sandbox.call(code, {}, NullHost(), CallLimits()) == ["micro", "port"]
        # the runtime's own channel is not the tool's: a check in that sandbox still answers
        await sandbox.prepare("u", "ts", b"export default () => 1", authority="test/-")


def test_every_sandbox_runs_without_permissions() -> None:
    flags = deno_flags(64)
    assert flags[0] == "run"
    assert not [f for f in flags if f.startswith("--allow")]
    for required in ("--no-prompt", "--no-remote", "--no-npm", "--no-config", "--deny-read",
                     "--deny-write", "--deny-net", "--deny-env", "--deny-run", "--deny-ffi",
                     "--deny-sys", "--deny-import"):
        assert required in flags
    v8 = next(f for f in flags if f.startswith("--v8-flags="))
    assert "--max-old-space-size=64" in v8 and "--disallow-code-generation-from-strings" in v8
    assert MAIN.exists() and CHECK.exists()


@pytest.mark.parametrize("entry", [MAIN, CHECK])
def test_the_runtime_says_hello_with_an_empty_environment(entry: Path, tmp_path: Path) -> None:
    (tmp_path / "deno-dir").mkdir()
    out = subprocess.run([find_deno(), *deno_flags(64), str(entry)], input=b"",
                         capture_output=True, cwd=tmp_path, timeout=60,
                         env={"NO_COLOR": "1", "DENO_DIR": str(tmp_path / "deno-dir")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"\x00\x00\x00") and b"hello" in out.stdout
