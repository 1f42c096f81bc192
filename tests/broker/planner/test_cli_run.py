"""`libos run IMAGE --goal TEXT` against the loopback replay server."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from broker.cli import main
from tests.broker.corpus import DECOY, EVERYTHING, LONG, TAIL, assert_escaped, assert_inert
from tests.broker.planner.replay import load, replay_server
from tests.conftest import bare_env

pytest.importorskip("openai")


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")


def image_file(tmp_path: Path, url: str, **planner: object) -> Path:
    path = tmp_path / "notes.json"
    path.write_text(json.dumps({
        "name": "notes", "tools": ["make_dir", "read_file", "write_file"],
        "needs": ["fs:/notes/**:read,write"],
        "planner": {"kind": "openai", "model": "m", "base_url": url + "/v1",
                    "api_key_env": "LIBOS_TEST_KEY", "max_retries": 0, **planner}}))
    return path


def test_run_prints_the_transcript_and_exits_with_the_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    responses = load("openai_conversation.json")
    # A model that writes terminal escapes: shown inert, never interpreted.
    responses[-1] = copy.deepcopy(responses[-1])
    responses[-1]["choices"][0]["message"]["content"] = "Done." + EVERYTHING + LONG
    with replay_server(responses) as api:
        code = main(["--db", str(tmp_path / "run.db"), "run",
                     str(image_file(tmp_path, api.url)), "--goal", "Write hello."])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "goal: Write hello." in out
    assert 'write_file({"path": "/notes/a.txt", "data": "hello"})' in out
    for code_ in ("INVALID_ARGUMENT", "NOT_FOUND", "NOT_CAPABLE"):
        assert code_ in out
    assert_inert(out)
    assert_escaped(out)
    assert "Done.\\u001b[2J" in out
    # A transcript is a summary: a very long text is cut, and the cut is marked.
    assert DECOY in out and TAIL not in out and "…" in out
    assert len(api.requests) == 6


def test_run_exits_nonzero_when_the_agent_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = load("openai_conversation.json")[1]
    with replay_server([bad] * 3) as api:
        code = main(["--db", str(tmp_path / "run.db"), "run",
                     str(image_file(tmp_path, api.url, max_failures=2)), "--goal", "Go.",
                     "--caps", "fs:/notes/**:read"])
    out = capsys.readouterr().out
    assert code == 1
    assert "LIMIT_EXCEEDED" in out


def test_run_needs_an_image_with_a_planner(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bare.json"
    path.write_text(json.dumps({"name": "bare", "tools": ["read_file"]}))
    assert main(["--db", str(tmp_path / "run.db"), "run", str(path), "--goal", "x"]) == 2
    assert "no planner" in capsys.readouterr().err


def test_run_takes_the_server_from_the_sdks_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    final = load("anthropic_conversation.json")[-1]
    with replay_server([final]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        path = tmp_path / "a.json"
        path.write_text(json.dumps({
            "name": "a", "tools": ["read_file"], "needs": ["fs:/notes/**:read"],
            "planner": {"kind": "anthropic", "model": "m", "api_key_env": "LIBOS_TEST_KEY",
                        "max_retries": 0}}))
        code = main(["--db", str(tmp_path / "run.db"), "run", str(path), "--goal", "Hi."])
    assert code == 0, capsys.readouterr()
    assert api.paths == ["/v1/messages"]
    assert api.requests[0]["messages"] == [{"role": "user", "content": "Hi."}]


def test_run_json_prints_only_the_status_on_stdout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with replay_server([load("openai_conversation.json")[-1]]) as api:
        code = main(["--db", str(tmp_path / "run.db"), "--json", "run",
                     str(image_file(tmp_path, api.url)), "--goal", "Hi."])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["result"] == "Done: /notes/a.txt says hello."
    assert "goal: Hi." in err


def test_a_model_api_failure_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    """A server that answers 500, and no server at all: the process ends with exit 1, and
    the command says so in a line each on stderr, without a traceback."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with replay_server([]) as failing:
        for url, error in ((failing.url, "InternalServerError"),
                           (closed, "APIConnectionError")):
            done = subprocess.run(
                [sys.executable, "-m", "broker.cli", "--db", str(tmp_path / f"{error}.db"), "run",
                 str(image_file(tmp_path, url)), "--goal", "Hi."],
                capture_output=True, text=True, timeout=120,
                env=bare_env(LIBOS_TEST_KEY="sk-test", COLUMNS="200"))
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr and "File \"" not in done.stderr
            failed = [line for line in done.stderr.splitlines() if "failed" in line]
            assert len(failed) == 1 and error in failed[0], done.stderr
            assert '"error": "PLANNER"' in done.stdout and error in done.stdout
