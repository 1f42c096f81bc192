"""Red team 38: the commands `libos approvals show` prints to be pasted (`--shown DIGEST`,
b5d1a47), attacked by a database writer without the key: the request's id is the writer's
text, and a pasted line is read by the person's shell before libos sees it."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import trio

from broker import Kernel, render
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.kernel.test_shown_answers_redteam24 import _rejected
from tests.broker.kernel.test_signed_answers_redteam21 import _write
from tests.broker.test_cli_approvals import _ask, libos


async def test_a_pasted_answer_line_runs_nothing_of_a_writers_request_id(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery, tmp_path: Path) -> None:
    """A writer renames a pending request to an id that holds shell syntax. Such an id is
    not one the broker makes: the request is listed nowhere and `show` refuses it, typed;
    and were one shown, the answer lines printed for it are read by a shell as the one id
    (nothing run). The neighbour request is listed and answered by its printed line."""
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    neighbour = await _ask(kernel, nursery, pid, results, path="/out/b.txt", data="b")
    owned = tmp_path / "owned"
    hostile = f"{request['id']}$(touch${{IFS}}{owned})`touch${{IFS}}{owned}`;touch {owned}"
    _write(db_path, request["id"], {"id": hostile})
    listing = libos(db_path, "approvals")
    assert listing.returncode == 0 and "touch" not in listing.stdout, listing.stdout
    assert neighbour["id"] in listing.stdout
    refused = libos(db_path, "approvals", "show", request["id"])  # (a unique prefix)
    assert refused.returncode == 2 and "not one the broker makes" in refused.stderr
    # Were it shown (the view alone): each answer line is one id to the person's shell.
    view = render.approval_view({**neighbour, "id": hostile}).plain
    lines = [line for line in view.split("\n") if "libos approve" in line
             and "--scope S" not in line]
    assert lines, view
    for line in lines:
        command = line.split("libos ", 1)[1].split("   ")[0].strip()
        # The person's shell, as it reads a pasted line (`:` runs nothing of its own).
        subprocess.run(["sh", "-c", f": {command}"], capture_output=True, timeout=30)
        assert not owned.exists(), command
        assert shlex.split(command)[1] == hostile  # the id, one word, as the store holds it
    # The neighbour: its line, as a shell hands it to libos, answers it.
    shown = libos(db_path, "approvals", "show", neighbour["id"]).stdout
    once = next(line for line in shown.split("\n") if "once: exactly these" in line)
    done = libos(db_path, *shlex.split(once.split("libos ", 1)[1].split("   ")[0]))
    assert done.returncode == 0, done.stderr
    assert not owned.exists()


async def test_a_shown_digest_of_another_or_malformed_is_refused_and_recorded(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """`--shown` of another request's digest, a huge one, an empty one, with `--always
    --scope`, by a prefix, or on `deny`: CONFLICT (no traceback), nothing written, audited."""
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    one = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    other = await _ask(kernel, nursery, pid, results, path="/out/b.txt", data="b")
    tries = [["approve", one["id"], "--shown", other["digest"]],
             ["approve", one["id"][:10], "--shown", other["digest"]],
             ["approve", one["id"], "--shown", "f" * 100_000],
             ["approve", one["id"], "--shown", ""],
             ["approve", one["id"], "--shown", one["digest"].upper()],
             ["approve", one["id"], "--always", "--scope", "/out/**", "--shown",
              other["digest"]],
             ["deny", one["id"], "--always", "--shown", other["digest"]]]
    for argv in tries:
        refused = libos(db_path, *argv)
        assert refused.returncode == 2 and "CONFLICT" in refused.stderr, (argv[:4],
                                                                          refused.stderr)
        assert "Traceback" not in refused.stderr
        assert kernel.store.get_approval(one["id"])["state"] == "pending"
    with trio.fail_after(10):
        while len(rejected := _rejected(kernel, one["id"])) < len(tries):
            kernel.queue.sweep()
            await trio.sleep(0.05)
    assert {r["detail"]["error"] for r in rejected} == {"CONFLICT"}
    done = libos(db_path, "approve", one["id"][:12], "--always", "--scope", "/out/**",
                 "--shown", one["digest"])
    assert done.returncode == 0, done.stderr


async def test_a_request_mistyped_by_a_writer_is_shown_with_no_unbound_answer(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """A writer gives a pending request a column of another type (its `tool` bytes):
    no digest (`shown_digest` None), so `show` printed its commands without `--shown`, and
    the writer, putting the type back with a wider scope after the showing, had the pasted
    line signed over the widened row (on main: rc 0). Now `show` prints no answer to paste,
    as the approvals page takes none without a digest."""
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path="/out/a.txt", data="a")
    _write(db_path, request["id"], {"tool": b"write_file"})
    shown = libos(db_path, "approvals", "show", request["id"])
    assert shown.returncode == 0, shown.stderr
    assert "none printed: the request's row is not of its types" in shown.stdout
    assert "libos approve" not in shown.stdout and "libos deny" not in shown.stdout
    # Typed bare over the mistyped row: a typed refusal, never a traceback.
    bare = libos(db_path, "approve", request["id"])
    assert "Traceback" not in bare.stderr and bare.returncode != 0, bare.stderr
    assert kernel.store.get_approval(request["id"])["state"] == "pending"
