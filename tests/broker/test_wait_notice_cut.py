"""The notice `libos run` prints when a process waits prints no command to answer a request
it shows only cut (red team 42, attacking lane rspeople's `--shown` notice; LOW to MEDIUM).

The notice summarises what is asked in 200 characters, cut with "…", and printed under it a
line to paste, `libos approve ID --shown DIGEST`, bound to the whole request, the tail the
notice hid included: the hidden-tail attack the table refuses (a value that does not fit its
cell is not shown at all, no prefix to approve by), here a path (for `shell.run` it is the
command: a decoy first, the real command past the cut). Now a request the notice cannot show
whole gets no command there: it says where to see it whole (`approvals show`, which prints
the commands bound to it); the neighbour shown whole keeps its bound line."""

from __future__ import annotations

import io
from pathlib import Path

import trio
from rich.console import Console

from broker import Kernel
from broker.waits import SUMMARY, WaitNotices
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.test_cli_approvals import _ask

DECOY = "/out/weekly-report"
HIDDEN = DECOY + "/" + "-" * SUMMARY + "/evil.sh"


def _notices(db_path: Path, kernel: Kernel) -> dict[str, str]:
    out = {}
    for request in kernel.approvals():
        console = Console(file=io.StringIO(), width=400)
        for line in WaitNotices(str(db_path)).new([request]):
            console.print(line, soft_wrap=True)
        out[request["id"]] = console.file.getvalue()  # type: ignore[attr-defined]
    return out


async def test_a_request_the_notice_cuts_gets_no_command_to_answer_it(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    cut = await _ask(kernel, nursery, pid, [], path=HIDDEN, data="x")
    whole = await _ask(kernel, nursery, pid, [], path="/out/b.txt", data="y")
    reason = await _ask(kernel, nursery, pid, [], path="/out/c.txt", data="z",
                        reason="tidy up " + "." * SUMMARY + " then delete everything")
    notices = _notices(db_path, kernel)
    for request in (cut, reason):
        text = notices[request["id"]]
        assert "…" in text and "evil.sh" not in text and "delete everything" not in text
        assert "libos --db" in text and "approvals show " + request["id"] in text
        assert f"approve {request['id']}" not in text, text
        assert request["digest"] not in text
    text = notices[whole["id"]]
    assert f"approve {whole['id']} --shown {whole['digest']}" in text
    assert f"deny {whole['id']} --shown {whole['digest']}" in text
