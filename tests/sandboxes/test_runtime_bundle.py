"""The bundled runtime every Deno sandbox runs (`ts-runtime/main.bundle.js`, made by
`ts-runtime/bundle.py` from main.ts and its modules) is the committed sources' bundle: a
source edited without regenerating it, or the bundle edited by hand, is found."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxes.deno import MAIN, RUNTIME_DIR, DenoSandbox

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ts_runtime_bundle", RUNTIME_DIR / "bundle.py")
assert _spec is not None and _spec.loader is not None
bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bundle)


def test_sandboxes_run_the_bundle() -> None:
    assert MAIN == bundle.BUNDLE == RUNTIME_DIR / "main.bundle.js"
    assert DenoSandbox().runtime == MAIN


def test_the_committed_bundle_matches_its_sources() -> None:
    out = subprocess.run([sys.executable, "ts-runtime/bundle.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_bundle_names_every_module_of_the_runtime() -> None:
    """Its header names what main.ts imports, transitively (the digest covers them all)."""
    names = bundle.HEADER.match(MAIN.read_text())["sources"].split()
    assert {"main.ts", "msgpack.ts", "lockdown.ts", "hide.ts", "syscalls.gen.ts"} <= set(names)
    assert "check.ts" not in names and all((RUNTIME_DIR / n).is_file() for n in names)


@pytest.fixture
def copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the runtime directory that `bundle` checks instead of the real one."""
    here = tmp_path / "ts-runtime"
    shutil.copytree(RUNTIME_DIR, here, ignore=shutil.ignore_patterns("pyodide", "__pycache__"))
    monkeypatch.setattr(bundle, "HERE", here)
    assert bundle.stale(here / "main.bundle.js") is None
    return here


def test_an_edited_source_makes_it_stale(copy: Path) -> None:
    source = copy / "msgpack.ts"  # imported by main.ts through another module
    source.write_text(source.read_text() + "\n// one more line\n")
    assert "other sources" in bundle.stale(copy / "main.bundle.js")


def test_an_edited_bundle_is_found(copy: Path) -> None:
    target = copy / "main.bundle.js"
    target.write_text(target.read_text().replace('kind: "deno"', 'kind: "evil"'))
    assert "edited" in bundle.stale(target)


def test_a_bundle_without_its_header_or_a_source_is_found(copy: Path) -> None:
    target = copy / "main.bundle.js"
    text = target.read_text()
    (copy / "hide.ts").unlink()
    assert "cannot be read" in bundle.stale(target)
    target.write_text(text.split("\n", 3)[3])
    assert "no header" in bundle.stale(target)
    target.unlink()
    assert "cannot be read" in bundle.stale(target)
