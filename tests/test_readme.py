"""The README's commands and example stay true: the embedding example runs exactly as
written, and the two set-up commands are the ones CI uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_embedding_example_runs_as_written(tmp_path: Path) -> None:
    code = re.search(r"## Embedding.*?```python\n(.*?)```", README, re.S)
    assert code, "README has no embedding example"
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "'state': 'exited'" in lines[0]
    assert lines[1] == "ship it"
    assert lines[2].startswith("denied: no capability for fs:read on '/etc/passwd'")
    assert any(" denied fs.read /etc/passwd" in line for line in lines)
    assert lines[-1].endswith(", [])")  # the audit chain verifies
    assert (tmp_path / "example-fs" / "notes" / "todo.txt").read_text() == "ship it"


def test_readme_test_command_is_what_ci_runs() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README)
    assert "bash .ci/run" in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[dev]'" in ci and ".venv/bin/pytest" in ci
    assert "ruff check" in ci
    assert any("libos demo" in c for c in commands)
