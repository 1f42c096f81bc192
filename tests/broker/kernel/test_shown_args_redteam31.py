"""Red team 31 on lane apprshown (DESIGN §9): what the page shows of a request but the
digest, and the signature, do not bind. The attacker is a database writer without the
user's key.

The arguments a capability request shows (`libos web`: "once allows exactly these"; the MCP
form; `libos approvals show`) were the `args` column as stored, never checked against the
`args_hash` the answer's grant is bound to (and the digest and signature cover): a writer set
`args` to something harmless, the person approved "once", and the call with the real
arguments ran (the secret exported). Now a request whose arguments do not give its hash is
unreadable to the front ends (left out of the listing, refused alone): nothing to approve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.approvals.stored import StoreApprovals, public
from broker.cli import main as cli_main
from broker.errors import Conflict, NotCapable
from broker.store import SQLiteStore, answer_sig
from broker.store.json_column import Unreadable
from tests.broker.kernel.test_shown_answers_redteam24 import _page, _until
from tests.broker.kernel.test_signed_answers_redteam21 import _exporting, _write
from tests.broker.store.conftest import raw

HARMLESS = json.dumps({"data": "hello", "path": "/exports/t"})


async def test_arguments_that_do_not_give_the_hash_are_not_shown_to_approve(
        db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, root, [asked, other], done):
        _write(db_path, asked["id"], {"args": HARMLESS})  # (its args_hash, the secret's)
        reader = SQLiteStore(db_path, writer=False)
        pages = StoreApprovals(reader, time.time)
        async with _page(pages) as (client, url):
            text = (await client.get(url)).text
            assert asked["id"] not in text and "hello" not in text  # nothing to approve
            assert other["id"] in text
        assert [r["id"] for r in pages.approvals()] == [other["id"]]
        assert [r["id"] for r in kernel.approvals()] == [other["id"]]
        with pytest.raises(Unreadable, match="do not give its hash"):
            public(kernel.store.get_approval(asked["id"]))
        assert cli_main(["approvals", "show", asked["id"], "--db", str(db_path)]) != 0
        out, err = capsys.readouterr()
        assert "hello" not in out and "do not give its hash" in err
        assert "Traceback" not in err
        # The neighbour: the other request, shown whole and approved through the page.
        [shown] = pages.approvals()
        assert shown["args"]["data"] == "tok-123"
        pages.approve(other["id"], who="web:ops", shown=shown["digest"])
        kernel.queue.sweep()
        await _until(done, "u")
        reader.close()
    assert (root / "exports" / "u").read_text() == "tok-123"
    assert not (root / "exports" / "t").exists()


def test_arguments_with_bytes_give_their_hash() -> None:
    """The stored form of bytes (`{"$bytes": base64}`) is read back as the bytes hashed, and
    a dict that only looks so as itself: neither is refused."""
    from broker.approvals.stored import encode_args
    from broker.store import args_hash

    deep: object = {"x": [b"\x01"]}
    for _ in range(300):
        deep = [deep]
    for args in ({"data": b"\x00\xffsecret", "path": "/x"}, {"v": {"$bytes": "AAE="}},
                 {"n": [1, 2.5, None, True, "é"]}, {}, {"deep": deep}):
        row = {"id": "apr_" + "0" * 24, "kind": "capability", "pid": 1, "tool": "t",
               "syscall": "fs.write", "resource": "/x", "args_hash": args_hash(args),
               "reason": None,
               "created": 1.0, "deadline": 2.0, "state": "pending", "answer": None,
               "who": None, "scope": None, "cap_kind": "fs", "cap_right": "write",
               "cap_scope": "/", "args": encode_args(args), "question": None, "value": None,
               "labels": None}
        assert public(row)["args_hash"] == args_hash(args)
    # Hostile text nested past what the hash reader takes is refused, typed, not a traceback.
    hostile = '{"a": ' + "[" * 700 + '{"$bytes": "AA=="}' + "]" * 700 + "}"
    with pytest.raises(Unreadable):
        public({**row, "args": hostile})


async def test_a_tools_refusals_saying_expired_are_not_read_as_expiries(
        db_path: Path, tmp_path: Path) -> None:
    """A tool's refused call is a `denied` record whose arguments it writes: each one saying
    `expired` was read and parsed by every front end's look for expiries (`libos approvals`
    read 100,000 whole, 2.5 s and 180 MiB, against 1 s without them). Now only records that
    begin as an expiry does are read; the expiry itself still is."""
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, _root, [old, other], done):
        for n in range(3):
            with pytest.raises(NotCapable):
                await kernel.call_tool(old["pid"], "read_file", {
                    "path": f'/expired/{n}","state":"expired'})
        kernel.queue._expire([old["id"]])  # (its deadline passed)
        reader = SQLiteStore(db_path, writer=False)
        tools = [r for r in kernel.audit() if r["phase"] == "denied"
                 and "expired" in json.dumps(r["detail"]) and "request" not in r["detail"]]
        assert len(tools) == 3  # (the tool's refusals are on the chain, saying it)
        for store in (reader, kernel.store):
            found = [d for _seq, d in store.expiry_records(0, whole=store is reader)]
            assert [(d["request"], d["state"]) for d in found] == [(old["id"], "expired")]
        # The neighbour: the expired request stays closed to a front end, the other answers.
        pages = StoreApprovals(reader, time.time)
        assert [r["id"] for r in pages.approvals()] == [other["id"]]
        [shown] = pages.approvals()
        pages.approve(other["id"], who="web:ops", shown=shown["digest"])
        kernel.queue.sweep()
        await _until(done, "u")
        reader.close()


@pytest.mark.parametrize("where", ["far", "next"])
async def test_a_record_past_the_chain_does_not_blind_a_long_lived_page(
        db_path: Path, tmp_path: Path, where: str) -> None:
    """`libos web` over the store reads the chain whole (`ClosedOnChain(whole=True)`), on
    from where its last look stopped. A writer inserts one record far past the chain's end
    that reads as an expiry (or at the next seq, which the broker's next record then takes),
    lets the page look, and deletes it (the chain whole again): the
    page's mark, left there, hid every expiry recorded since, and a request expired then and
    set back to pending was listed and answered on the page (red team 26's hole, in the
    front end). Now a page that finds the record its last look
    read up to gone or replaced reads the chain again from the start."""
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, _root, [old, other], done):
        reader = SQLiteStore(db_path, writer=False)
        pages = StoreApprovals(reader, time.time)
        assert len(pages.approvals()) == 2
        seq = 10**9 if where == "far" else kernel.store.last_seq() + 1
        with raw(db_path) as db:
            db.execute("INSERT INTO audit (seq, ts, phase, syscall, detail, prev_hash, hash)"
                       " VALUES (?, 0, 'denied', 'x', ?, '', 'forged')",
                       (seq, '{"request":"apr_none","state":"expired"}'))
        assert len(pages.approvals()) == 2  # (the page looked, the record there)
        with raw(db_path) as db:
            db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
        kernel.queue._expire([old["id"]])  # (its deadline passed: on the chain)
        assert where == "far" or kernel.store.hash_at(seq) not in (None, "forged")
        await revived_is_refused(kernel, db_path, pages, old, other, done)
        reader.close()


async def revived_is_refused(kernel: Any, db_path: Path, pages: Any, old: dict[str, Any],
                             other: dict[str, Any], done: list[str]) -> None:
    """`old`, expired on the chain, set back to pending by a writer: the page neither lists
    nor answers it (`Conflict`); the neighbour, `other`, answered on the same page, applies
    (its call, "u", done)."""
    await trio.sleep(0.3)
    _write(db_path, old["id"], {"state": "pending", "deadline": time.time() + 300,
                                "answered": None, "applied": None})
    assert [r["id"] for r in pages.approvals()] == [other["id"]]
    digest = answer_sig.shown_digest(kernel.store.get_approval(old["id"]))
    with pytest.raises(Conflict, match="expired"):
        pages.approve(old["id"], who="web:ops", shown=digest)
    pages.approve(other["id"], who="web:ops", shown=pages.approvals()[0]["digest"])
    kernel.queue.sweep()
    await _until(done, "u")
