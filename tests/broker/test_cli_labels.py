"""`libos ps` shows each process's label and `libos caps` each capability's label bounds, read
from the store by another OS process (the real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.conftest import bare_env, open_image

LIBOS = [sys.executable, "-m", "broker.cli"]
SECRET = {"kind": "fs", "scope": "/secrets/**", "rights": ["read"], "labels": ["secret"]}
EXPORT = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
          "flows": {"secret": "deny", "untrusted": "ask"}}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIBOS, *args], capture_output=True, text=True, timeout=120,
                          env=bare_env(COLUMNS="200"))


async def _populate(db: Path) -> tuple[int, int]:
    async with Kernel.open(db) as kernel:
        root = Path(kernel.fs.root)  # type: ignore[attr-defined]
        (root / "secrets").mkdir()
        (root / "secrets" / "t").write_text("tok")
        await open_image(kernel)
        reader = kernel.spawn("agent", caps=[SECRET, EXPORT])
        clean = kernel.spawn("agent", caps=[EXPORT])
        await kernel.call_tool(reader, "read_file", {"path": "/secrets/t"})
        with pytest.raises(NotCapable):
            await kernel.call_tool(reader, "write_file", {"path": "/exports/t", "data": "x"})
        return reader, clean


async def test_ps_shows_labels_and_caps_show_bounds(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    reader, clean = await _populate(db)
    listed = run("ps", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    labels = {p["pid"]: p["labels"] for p in json.loads(listed.stdout)}
    assert labels == {reader: ["secret"], clean: []}
    table = run("ps", "--db", str(db))
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines()
            if line.startswith("│")}
    assert "secret" in rows[str(reader)] and "public" in rows[str(clean)]
    caps = run("caps", str(reader), "--db", str(db), "--json")
    by_scope = {c["scope"]: c for c in json.loads(caps.stdout)}
    assert by_scope["/secrets/**"]["labels"] == ["secret"]
    assert by_scope["/exports/**"]["flows"] == {"secret": "deny", "untrusted": "ask"}
    shown = run("caps", str(reader), "--db", str(db)).stdout
    assert "gives secret" in shown and "secret: deny; untrusted: ask" in shown
    audit = json.loads(run("audit", "--db", str(db), "--json", "--pid", str(reader)).stdout)
    [denied] = [r for r in audit if r["phase"] == "denied"]
    assert denied["detail"]["labels"] == ["secret"]
