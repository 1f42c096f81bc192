"""Control requests are rows anyone who writes the database may write: a hostile one is
answered with a typed error, the broker goes on, and the requests taken with it in its batch
are still applied and answered (red team, session 16)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.store import control_sig
from broker.store.keys import AuditKey
from tests.broker.test_cli_control import answered_by_hand
from tests.conftest import open_image

TICKER = {"kind": "scripted", "actions": [{"tool": "sleep", "args": {"seconds": 0.05}}] * 2000}


async def _answered(kernel: Any, request: int) -> Any:
    with trio.fail_after(20):
        while (answer := kernel.store.control_result(request)) is None:
            await trio.sleep(0.02)
    return answer


def _add_rows(kernel: Any, rows: list[tuple[str, int, str | None]]) -> list[int]:
    """Requests written by hand, in one commit (so one look of the broker takes them all),
    signed with the operator's key (the hostile part is their content: a forged one is
    refused before it is read, `test_forged_control_redteam15`)."""
    key, identity = AuditKey.open(), kernel.store.identity
    with sqlite3.connect(kernel.store.path) as db:
        return [db.execute("INSERT INTO control(verb, pid, created, arg, sig) VALUES"
                           " (?,?,?,?,?) RETURNING id",
                           (verb, pid, now, arg, control_sig.sign(key, identity, verb, pid, arg,
                                                                  now))).fetchone()[0]
                for verb, pid, arg in rows for now in [time.time()]]


async def test_a_request_whose_argument_is_not_json_is_refused_and_the_broker_goes_on(
        db_path: Path) -> None:
    """Its argument was decoded while taking it: the broker's controls task died of the
    JSONDecodeError (the broker with it), and again at each start while the row stayed."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        pid = kernel.spawn("ticker", caps=["clock:*:sleep"])
        bad, deep, pause = _add_rows(kernel, [("kill", pid, "{not json"),
                                               ("fork", pid, "[" * 100_000),
                                               ("pause", pid, None)])
        assert await _answered(kernel, bad) == {"error": "INVALID_ARGUMENT",
                                                "message": "its argument is not JSON"}
        assert (await _answered(kernel, deep))["error"] == "INVALID_ARGUMENT"
        assert await _answered(kernel, pause) == {"applied": True}
        assert kernel.process(pid).state.value != "killed"


async def test_a_request_that_fails_untyped_does_not_lose_the_rest_of_its_batch(
        db_path: Path) -> None:
    """A fork from a checkpoint row that is not JSON raised out of the batch: the kill taken
    with it was never applied nor answered (`libos kill` said 'taken by a broker, which has
    not answered yet' for an hour), and the broker ended."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        source = kernel.spawn("ticker", caps=["clock:*:sleep"])
        victim = kernel.spawn("ticker", caps=["clock:*:sleep"])
        with trio.fail_after(20):
            while kernel.store.checkpoint(source) is None:
                await trio.sleep(0.02)
        kernel.kill(source)  # (no step after: its latest checkpoint stays the one spoilt)
        with trio.fail_after(20):
            while kernel.store.get_process(source)["state"] != "killed":
                await trio.sleep(0.02)
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE checkpoint_log SET state='{' WHERE pid=?", (source,))
        fork, kill = _add_rows(kernel, [("fork", source, '{"checkpoint": null}'),
                                         ("kill", victim, None)])
        failed = await _answered(kernel, fork)
        assert failed["error"] == "CONFLICT"  # (typed now: `json_column.Unreadable`)
        assert "checkpoint cannot be read back (not JSON)" in failed["message"], failed
        assert await _answered(kernel, kill) == {"applied": True}
        with trio.fail_after(20):
            while kernel.process(victim).state.value != "killed":
                await trio.sleep(0.02)
        other = kernel.spawn("ticker", caps=["clock:*:sleep"])
        paused = kernel.store.add_control("pause", other)  # the broker still applies them
        assert await _answered(kernel, paused) == {"applied": True}


def test_libos_pause_shows_the_state_it_reads_back_inert(db_path: Path) -> None:
    """The state the command prints after its answer is a row too: it went out as rich
    markup, with its terminal escapes and line breaks (as `libos fork`'s answer did)."""
    def answer(db: Any, pid: int) -> None:
        db.execute("UPDATE processes SET state=? WHERE pid=?",
                   ("paused\x1b]0;owned\x07[blink]\x1b[2J\npause 9: paused", pid))
        db.execute("UPDATE control SET done=?, result=? WHERE pid=?",
                   (time.time(), json.dumps({"applied": True}), pid))

    returncode, out, err = answered_by_hand(db_path, "pause", answer)
    assert returncode == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err, out
    assert len(out.strip().splitlines()) == 1, out
    assert "[blink]" in out  # shown as text, not taken as markup


def test_an_answer_that_is_not_json_is_a_typed_error(db_path: Path) -> None:
    """`libos pause` read it back as JSON: an answer that is not was an INTERNAL failure (a
    bug's exit status) for a row anyone who writes the database may write."""
    from broker.store.opening import open_store

    store = open_store(db_path)
    try:
        pid = store.insert_process(parent=None, image="a", version="1", state="running",
                                   root="/", cwd="/")
        request = store.add_control("pause", pid)
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE control SET done=?, result='{' WHERE id=?", (time.time(), request))
        assert store.control_result(request) == {
            "error": "PROTOCOL_ERROR", "message": f"request {request}'s answer is not JSON"}
    finally:
        store.close()
