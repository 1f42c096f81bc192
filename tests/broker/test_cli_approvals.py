"""`libos approvals` and `libos approvals show ID`, run for real in a subprocess against a store
a live broker holds: every string inert, every value whole or not shown at all."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from tests.broker.corpus import (
    CORPUS,
    DECOY,
    EVERYTHING,
    LINE_FORGERY,
    LONG,
    TAIL,
    assert_escaped,
    assert_inert,
)
from tests.broker.kernel.test_approvals import ASK_WRITE, NEEDS, _collect, _pending, _proc
from tests.broker.kernel.test_shown_answers_redteam24 import _rejected
from tests.broker.kernel.test_signed_answers_redteam21 import _write
from tests.conftest import bare_env, open_image

LIBOS = [sys.executable, "-m", "broker.cli"]


def libos(db: Path, *args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIBOS, "--db", str(db), *args], capture_output=True, text=True,
                          timeout=120, env=bare_env(COLUMNS=str(columns)))


async def _ask(kernel: Kernel, nursery: trio.Nursery, pid: int, results: list[Any],
               **args: Any) -> dict[str, Any]:
    before = len(kernel.approvals())
    nursery.start_soon(_collect, results, kernel.call_tool(pid, "write_file", args))
    return (await _pending(kernel, before + 1))[-1]


async def test_the_table_shows_each_value_whole_or_not_at_all(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    # The hidden-tail attack: a decoy first, the real command thousands of characters on.
    long = await _ask(kernel, nursery, pid, results, path="/out/long.sh", data=LONG,
                      reason="generate the report")
    # Short values with the corpus in them: shown whole, inert.
    for name, (text, _) in CORPUS.items():
        await _ask(kernel, nursery, pid, results, path=f"/out/{name}.txt", data="x",
                   reason=text)
    short = await _ask(kernel, nursery, pid, results, path="/out/ok.txt", data="fine")

    wide = libos(db_path, "approvals", columns=2000)
    assert wide.returncode == 0, wide.stderr
    assert_inert(wide.stdout)
    assert_escaped(wide.stdout)
    # Nothing of the long arguments: not the decoy, not the tail; a pointer instead.
    assert DECOY not in wide.stdout and TAIL not in wide.stdout
    assert f"not shown here: libos approvals show {long['id']}" in wide.stdout
    assert '{"data": "fine", "path": "/out/ok.txt"}' in wide.stdout  # short: whole
    # However narrow the terminal, a cell is folded, never cut with an ellipsis.
    narrow = libos(db_path, "approvals", columns=60)
    assert narrow.returncode == 0 and "…" not in narrow.stdout
    assert_inert(narrow.stdout)
    ids, asks = column(narrow.stdout, 0), column(narrow.stdout, 6)
    assert short["id"] in ids and long["id"] in ids
    assert '{"data":"fine","path":"/out/ok.txt"}' in asks


def column(table: str, n: int) -> str:
    """Column `n` of a rich table, its folded pieces joined, with no whitespace."""
    cells = [line.split("│")[n + 1] for line in table.split("\n") if line.startswith("│")]
    return "".join("".join(cells).split())


async def test_show_is_whole_inert_and_names_the_hash_once_binds_to(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    data = EVERYTHING + LONG
    request = await _ask(kernel, nursery, pid, results, path="/out/run.sh", data=data,
                         reason=LINE_FORGERY[0])
    shown = libos(db_path, "approvals", "show", request["id"], columns=80)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert_inert(out)
    assert_escaped(out)
    # Whole: the decoy, the tail, and the key that sorts after the long value.
    assert DECOY in out and TAIL in out and '  "path": "/out/run.sh",' in out.split("\n")
    assert f"sha256 {request['args_hash']}" in out
    bound = f"{request['id']} --shown {request['digest']}"  # (as shown: `--shown`)
    assert f"libos approve {bound}" in out
    # The scopes an "always" may take, narrowest first, none wider than the asking capability
    # (each one word for the shell: a pattern unquoted is a glob the shell expands).
    assert f"libos approve {bound} --always --scope S   S one of: /out/run.sh, " \
           "'/out/**'" in out
    # The forged line is one escaped line, never a line of its own.
    assert not any(line.startswith("tool: read_file") for line in out.split("\n"))
    # --json is read in terminals too: inert there (JSON escapes), and the same value parsed.
    for args in (("approvals", "show", request["id"]), ("approvals",), ("audit",)):
        raw = libos(db_path, *args, "--json").stdout
        assert_inert(raw)
        assert "\\u202e" in raw and "\\u2028" in raw and "\\u009b" in raw
    as_json = json.loads(libos(db_path, "approvals", "show", request["id"], "--json").stdout)
    assert as_json["args"]["data"] == data and json.loads(as_json["args_text"])["data"] == data
    missing = libos(db_path, "approvals", "show", "apr_nope")
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr

    # A legitimate approval of what was shown: exactly that is written.
    approved = libos(db_path, "approve", request["id"])
    assert approved.returncode == 0, approved.stderr
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.05)
    assert results == [len(data.encode())]
    assert Path(kernel.fs.root, "out/run.sh").read_text() == data  # type: ignore[arg-type]


async def test_a_question_is_shown_whole_with_its_choices(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    await open_image(kernel, "asker", needs=NEEDS, tools=("ask_human",))
    pid = kernel.spawn("asker", caps=["human:operator:ask"])
    results: list[Any] = []
    choices = [text for text, _ in CORPUS.values()] + [LONG]
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "ask_human", {"question": "Pick one " + EVERYTHING, "choices": choices}))
    [question] = await _pending(kernel)
    out = libos(db_path, "approvals", "show", question["id"]).stdout
    assert_inert(out)
    assert_escaped(out)
    assert TAIL in out and f"libos answer {question['id']}" in out
    table = libos(db_path, "approvals", columns=2000).stdout
    assert_inert(table) and "Pick one" not in table  # too long for a cell: not shown
    kernel.answer(question["id"], LONG)
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [LONG]


async def test_ids_can_be_pasted_and_a_prefix_must_name_one_request(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """Seventeen requests: two of them must share the first character after `apr_`."""
    pids = [await _proc(kernel, ASK_WRITE), kernel.spawn("agent", caps=[ASK_WRITE])]
    results: list[Any] = []
    for n in range(17):
        await _ask(kernel, nursery, pids[n % 2], results, path=f"/out/{n}.txt", data=str(n))
    ids = [r["id"] for r in kernel.approvals()]
    # However narrow the terminal, each id is whole on one line: what a person copies.
    table = libos(db_path, "approvals", columns=60)
    assert table.returncode == 0, table.stderr
    rows = "\n".join(line for line in table.stdout.split("\n") if line.startswith("│"))
    assert re.findall(r"apr_[0-9a-f]{24}", rows) == ids
    assert f"libos --db {db_path} approve {ids[0]}" in " ".join(table.stdout.split())

    first = {}
    for rid in ids:
        first.setdefault(rid[4], []).append(rid)
    shared = next(group for group in first.values() if len(group) > 1)
    for prefix in (shared[0][:5], shared[0][4]):  # with and without `apr_`
        refused = libos(db_path, "approve", prefix)
        assert refused.returncode == 2, refused.stdout
        assert "INVALID_ARGUMENT" in refused.stderr and "more than one" in refused.stderr
        assert shared[0] in refused.stderr and shared[1] in refused.stderr
        as_json = json.loads(libos(db_path, "deny", prefix, "--json").stdout)
        assert as_json["error"] == "INVALID_ARGUMENT" and shared[1] in as_json["message"]
    assert [r["state"] for r in kernel.approvals(None)] == ["pending"] * 17  # none answered
    assert libos(db_path, "approve", "apr_").returncode == 2
    assert "NOT_FOUND" in libos(db_path, "approve", "apr_zz").stderr

    # The shortest prefix that names one request is enough; here without `apr_`.
    target = shared[1]
    length = next(n for n in range(5, 29)
                  if [i for i in ids if i.startswith(target[:n])] == [target])
    approved = libos(db_path, "approve", target[4:length])
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith(f"{target}: approved (once)")
    shown = libos(db_path, "approvals", "show", target[:length])
    assert shown.returncode == 0 and target in shown.stdout
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.05)
    index = ids.index(target)
    assert results == [len(str(index))]
    assert Path(kernel.fs.root, f"out/{index}.txt").read_text() == str(index)  # type: ignore[arg-type]


async def test_the_commands_show_prints_answer_only_the_request_as_shown(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """`libos approvals show` prints its commands with the digest of the request as shown
    (`--shown`): a database writer who widens the request between the showing and the answer
    gets CONFLICT, nothing signed, the refusal recorded; the neighbour's answer applies."""
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    edited = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    kept = await _ask(kernel, nursery, pid, results, path="/out/b.txt", data="b")
    once = {}
    for request in (edited, kept):
        out = libos(db_path, "approvals", "show", request["id"]).stdout
        [line] = [line for line in out.split("\n") if "once: exactly these" in line]
        once[request["id"]] = line.split("libos ", 1)[1].split("  ")[0].split()
        assert once[request["id"]] == ["approve", request["id"], "--shown",
                                       request["digest"]]
    _write(db_path, edited["id"], {"cap_scope": "/**"})  # (after the showing)
    refused = libos(db_path, *once[edited["id"]])
    assert refused.returncode == 2 and "CONFLICT" in refused.stderr, refused.stderr
    with trio.fail_after(10):
        while not (rejected := _rejected(kernel, edited["id"])):
            kernel.queue.sweep()
            await trio.sleep(0.05)
    assert rejected[0]["detail"]["error"] == "CONFLICT"
    assert kernel.store.get_approval(edited["id"])["state"] == "pending"
    approved = libos(db_path, *once[kept["id"]])
    assert approved.returncode == 0, approved.stderr
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.05)
    assert results == [1]
    assert Path(kernel.fs.root, "out/b.txt").read_text() == "b"  # type: ignore[arg-type]
    assert not Path(kernel.fs.root, "out/a.txt").exists()  # type: ignore[arg-type]
