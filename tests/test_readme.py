"""The README's commands and examples stay true: the embedding examples (trio, sandboxes, and
the kernel in a thread for plain and asyncio code) run exactly as written, and the two set-up
commands are the ones CI uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxes.pyodide import pyodide_available

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _examples() -> list[str]:
    section = README[README.index("## Embedding"):README.index("## Model planners")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(code: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_embedding_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_examples()[0], tmp_path)
    assert "'state': 'exited'" in lines[0]
    assert lines[1] == "ship it"
    assert lines[2].startswith("denied: no capability for fs:read on '/etc/passwd'")
    assert any(" denied fs.read /etc/passwd" in line for line in lines)
    assert lines[-1].endswith(", [])")  # the audit chain verifies
    assert (tmp_path / "example-fs" / "notes" / "todo.txt").read_text() == "ship it"


def test_sandboxed_tool_example_runs_as_written(tmp_path: Path) -> None:
    assert _run(_examples()[1], tmp_path) == ["{'lines': 3}"]


def test_kernel_thread_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_examples()[2], tmp_path)
    assert lines[0].startswith("denied: no capability for fs:read on '/etc/passwd'")
    assert lines[1] == "['ship it', 'ship it', 'ship it']"
    assert lines[2].endswith(", [])")  # the audit chain verifies
    assert len(lines) == 3


def test_readme_test_command_is_what_ci_runs() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README)
    assert "bash .ci/run" in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[dev]'" in ci and ".venv/bin/pytest" in ci
    assert "ruff check" in ci
    assert any("libos demo" in c for c in commands)


def test_protect_your_own_functions_example_runs_as_written(tmp_path: Path) -> None:
    section = README[README.index("## Protect your own functions"):
                     README.index("## Agent frameworks")]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    lines = _run(example, tmp_path)
    assert lines[0] == "{'queued': 1}"  # allowed: a colleague
    assert lines[1] == "denied: no capability for email:send on 'eve@evil.com'"
    assert lines[2] == ("asked: email:send ann@partner.com "
                        "{'subject': 'the offer', 'to': 'ann@partner.com'}")
    assert lines[3] == "{'queued': 2}"  # approved once by the person
    assert lines[4] == "['bob@example.com', 'ann@partner.com']"
    records = [line.split(" ", 1)[1] for line in lines[5:-1]]
    assert records == ["intent bob@example.com", "outcome bob@example.com",
                       "denied eve@evil.com", "ask ann@partner.com", "intent ann@partner.com",
                       "outcome ann@partner.com"]
    assert lines[-1].endswith(", [])")  # the audit chain verifies


def _framework_example(name: str) -> str:
    """The one example of a framework's subsection of "Agent frameworks"."""
    start = README.index(f"### {name}")
    ends = (README.find("\n### ", start), README.index("## The process model"))
    section = README[start:min(end for end in ends if end != -1)]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    return example


def test_pydantic_ai_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_framework_example("Pydantic AI"), tmp_path)
    assert lines[0] == "asked: email:send ann@partner.com"
    assert lines[1] == ("['{\"error\": \"NOT_CAPABLE\", \"message\": \"no capability for "
                        "email:send on \\'eve@evil.com\\'\"}', 'sent to ann@partner.com']")
    assert lines[2].endswith(", [])")  # the audit chain verifies


def test_openai_agents_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_framework_example("OpenAI Agents SDK"), tmp_path)
    assert lines[0] == 'asked: send_email {"to":"ann@partner.com","subject":"hi"}'
    assert lines[1] == ("done ['{\"error\": \"NOT_CAPABLE\", \"message\": \"no capability "
                        "for email:send on \\'eve@evil.com\\'\"}', 'sent to ann@partner.com']")
    assert lines[2].endswith(", [])")  # the audit chain verifies


def test_langchain_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_framework_example("LangChain and LangGraph"), tmp_path)
    assert lines[:3] == [
        "asked: email:send ann@partner.com",
        "error {\"error\": \"NOT_CAPABLE\", \"message\": \"no capability for email:send on "
        "'eve@evil.com'\"}",
        "success sent to ann@partner.com"]
    assert lines[3].endswith(", [])")  # the audit chain verifies


@pytest.mark.skipif(not pyodide_available(), reason="Pyodide is not set up (libos setup)")
def test_smolagents_example_runs_as_written(tmp_path: Path) -> None:
    lines = _run(_framework_example("smolagents"), tmp_path)
    assert lines[0] == "model saw: ['New task:', 'Email Bob']"
    assert lines[1] == ("model saw: ['Call id: call_1', 'Error:', \"NotCapable (NOT_CAPABLE): "
                        "no capability for email:send on 'eve@evil.com'\"]")
    assert lines[2] == "sent to bob@example.com"
    assert lines[3].endswith(", [])")  # the audit chain verifies


def test_mcp_client_example_runs_as_written(tmp_path: Path) -> None:
    section = README[README.index("## Tools of other MCP servers"):
                     README.index("## Protect your own functions")]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    lines = _run(example, tmp_path)
    assert lines[0] == "['weather.forecast', 'weather.set_alarm']"
    assert lines[1] == "{'result': 'sunny in Oslo'}"
    assert lines[2].startswith("denied: no capability for mcp:call on 'weather/set_alarm'")
    assert lines[3:] == ["intent host.weather.forecast weather/forecast",
                         "outcome host.weather.forecast weather/forecast",
                         "denied host.weather.set_alarm weather/set_alarm"]
