"""Red team 24's two holes left open, closed (DESIGN §9, lane apprshown). The attacker is a
database writer without the user's key, who edits the store's rows at any moment.

1. An answer was signed over the row as read at the click, not as the page showed it: a
   label added between the page and the click was signed (and lifted) too. Now the page
   carries the digest of what it showed, and the store signs only over a row that still
   gives it: else `Conflict`, shown to the person, nothing signed or written, the refusal on
   the record. The neighbour: the request as shown, answered through the page, applies.
2. A request the chain records expired, set back to pending with a later deadline, was
   listed pending and answered again. Now it is settled as the chain says: not listed, no
   answer signed to it (`libos approve`, the page), none applied by the broker (`rejected`,
   expired again)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker import Conflict, Kernel
from broker.approvals.stored import StoreApprovals
from broker.cli import main as cli_main
from broker.providers.web import ApprovalApi, serve
from broker.store import SQLiteStore, answer_sig
from tests.broker.kernel.test_signed_answers_redteam21 import (
    _exporting,
    _refused,
    _signed_for,
    _write,
)

WIDER = json.dumps(["pii", "secret"])  # the label a writer adds: `pii` lifted too


@asynccontextmanager
async def _page(api: ApprovalApi) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve, api, who="web:ops"))
        async with httpx.AsyncClient(trust_env=False) as client:
            yield client, url
        nursery.cancel_scope.cancel()


async def _shown(client: httpx.AsyncClient, url: str, approval_id: str) -> dict[str, str]:
    """The form the page shows for the request: its hidden fields."""
    text = (await client.get(url)).text
    form = text.split(f'data-id="{approval_id}"')[1].split("</form>")[0]
    return {name: form.split(f'name="{name}" value="')[1].split('"')[0]
            for name in ("csrf", "id", "digest")}


def _rejected(kernel: Kernel, approval_id: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["syscall"] == "approval.answer"
            and r["phase"] == "rejected" and r["detail"].get("request") == approval_id]


def _applied(kernel: Kernel, approval_id: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["syscall"] == "approval.answer"
            and r["phase"] == "admin" and r["detail"].get("request") == approval_id]


async def _until(done: list[str], name: str) -> None:
    with trio.fail_after(10):
        while name not in done:
            await trio.sleep(0.05)


@pytest.mark.parametrize("front", ["store", "kernel"])
async def test_an_edit_between_the_page_and_the_click_is_not_signed(
        db_path: Path, tmp_path: Path, front: str) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        reader = SQLiteStore(db_path, writer=False)
        api: ApprovalApi = StoreApprovals(reader, time.time) if front == "store" else kernel
        async with _page(api) as (client, url):
            shown = await _shown(client, url, request["id"])
            labels = kernel.store.get_approval(request["id"])["labels"]
            _write(db_path, request["id"], {"labels": WIDER})  # after the page, before the click
            response = await client.post(url + "answer", data={**shown, "action": "once"})
            assert response.status_code == 409
            assert "changed since it was shown; look again" in response.text
            row = kernel.store.get_approval(request["id"])
            assert (row["state"], row["answer"], row["sig"]) == ("pending", None, None)
            kernel.queue.sweep()  # (a front end's refusal, moved into the chain)
            [record] = _rejected(kernel, request["id"])
            assert record["detail"]["error"] == "CONFLICT"
            assert "changed since it was shown" in record["detail"]["message"]
            # An answer that does not say what it saw is refused before anything is asked.
            bare = {k: v for k, v in shown.items() if k != "digest"}
            assert (await client.post(url + "answer", data={**bare, "action": "once"})
                    ).status_code == 400
            # The neighbour: the request as it was shown, answered through the page, applies.
            _write(db_path, request["id"], {"labels": labels})
            response = await client.post(url + "answer", data={**shown, "action": "once"})
            assert response.status_code == 303
            await _until(done, "t")
        reader.close()
    assert (root / "exports" / "t").read_text() == "tok-123"


async def test_an_edit_after_an_answer_given_here_is_not_applied_with_it(
        db_path: Path, tmp_path: Path) -> None:
    """The broker's own front end (`Kernel.approve`, the page over the kernel) wrote the
    answer over the request as shown; the writer edits the request before the waiting call
    looks. The answer given here was applied to the row as read then (unsigned by any check):
    `pii` lifted. Now it is applied only while its signature holds over the row."""
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        labels = kernel.store.get_approval(request["id"])["labels"]
        kernel.approve(request["id"], who="alice", shown=request["digest"])
        _write(db_path, request["id"], {"labels": WIDER})  # (before the waiter looks)
        record = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "does not hold" in record["detail"]["message"]
        assert not _applied(kernel, request["id"]) and "t" not in done
        # The neighbour: the request as shown, approved again, applies.
        _write(db_path, request["id"], {"labels": labels})
        kernel.approve(request["id"], who="alice", shown=request["digest"])
        await _until(done, "t")
    assert (root / "exports" / "t").read_text() == "tok-123"


@asynccontextmanager
async def _revived(db_path: Path, tmp_path: Path
                   ) -> AsyncIterator[tuple[Kernel, dict[str, Any], dict[str, Any], list[str]]]:
    """Two requests; the first expires (on the chain), then a writer sets it back to pending
    with a later deadline. Yields the kernel, the revived request, the other, the names done."""
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, _root, [old, other], done):
        kernel.queue._expire([old["id"]])  # (its deadline passed: the broker's own sweep)
        assert kernel.store.get_approval(old["id"])["state"] == "expired"
        await trio.sleep(0.3)  # (the waiting call takes its denial)
        _write(db_path, old["id"], {"state": "pending", "deadline": time.time() + 300,
                                    "answered": None, "applied": None})
        yield kernel, old, other, done


async def test_an_expired_request_revived_is_neither_listed_nor_answered_by_a_front_end(
        db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with _revived(db_path, tmp_path) as (kernel, old, other, done):
        reader = SQLiteStore(db_path, writer=False)
        pages = StoreApprovals(reader, time.time)
        assert [r["id"] for r in pages.approvals()] == [other["id"]]
        assert [r["id"] for r in kernel.approvals()] == [other["id"]]
        assert cli_main(["approvals", "--db", str(db_path), "--json"]) == 0
        assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [other["id"]]
        assert cli_main(["approvals", "show", old["id"], "--db", str(db_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "expired"
        # `libos approve` refuses to sign an answer to it.
        assert cli_main(["approve", old["id"], "--db", str(db_path)]) != 0
        assert "expired" in capsys.readouterr().err
        # So does the page, given the request's digest as a page would show it.
        async with _page(pages) as (client, url):
            form = await _shown(client, url, other["id"])
            digest = answer_sig.shown_digest(kernel.store.get_approval(old["id"]))
            response = await client.post(url + "answer", data={
                **form, "id": old["id"], "digest": digest, "action": "once"})
            assert response.status_code == 409 and "expired" in response.text
        with pytest.raises(Exception, match="expired") as raised:
            kernel.approve(old["id"], who="alice")  # (and the kernel's own API)
        assert type(raised.value).__name__ == "Conflict"
        row = kernel.store.get_approval(old["id"])
        assert (row["state"], row["answer"], row["sig"]) == ("pending", None, None)
        kernel.queue.sweep()
        refused = _rejected(kernel, old["id"])
        assert len(refused) == 3 and {r["detail"]["error"] for r in refused} == {"CONFLICT"}
        assert not _applied(kernel, old["id"]) and "t" not in done
        # The neighbour: the other request, answered through the CLI, applies.
        assert cli_main(["approve", other["id"], "--db", str(db_path)]) == 0
        kernel.queue.sweep()
        await _until(done, "u")
        reader.close()


async def test_an_answer_to_an_expired_request_revived_is_not_applied(
        db_path: Path, tmp_path: Path) -> None:
    """The person's signed answer in the revived row (signed before the fix, or by a front
    end that did not look): the broker refuses it, on the record, and the request is expired
    again."""
    async with _revived(db_path, tmp_path) as (kernel, old, other, done):
        _write(db_path, old["id"], _signed_for(kernel, old))
        kernel.queue.sweep()
        assert not _applied(kernel, old["id"])
        [record] = _rejected(kernel, old["id"])
        assert (record["detail"]["error"], record["detail"]["via"]) == ("CONFLICT", "store")
        assert "expired" in record["detail"]["message"]
        row = kernel.store.get_approval(old["id"])
        assert (row["state"], row["answer"], row["sig"]) == ("expired", None, None)
        assert row["applied"] is not None and "t" not in done
        assert kernel.queue.answers.settled_before(old["id"])
        # The neighbour: a signed answer to the other request applies.
        _write(db_path, other["id"], _signed_for(kernel, other))
        kernel.queue.sweep()
        await _until(done, "u")
        assert [r["detail"]["request"] for r in kernel.audit()
                if r["syscall"] == "approval.answer" and r["phase"] == "admin"] == [other["id"]]


async def test_a_bare_answer_signs_only_the_row_it_checked(
        db_path: Path, tmp_path: Path) -> None:
    """`libos approve ID` without `--shown` read the row, checked it, then signed whatever
    row was there at its write (red team 42): a writer's label added in between was signed
    unseen. The row it checked is now its digest: the write over another is `Conflict`."""
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        labels = kernel.store.get_approval(request["id"])["labels"]
        reader = SQLiteStore(db_path, writer=False)
        writing = reader.answer_approval

        def edited_first(*args: Any, **kwargs: Any) -> Any:
            _write(db_path, request["id"], {"labels": WIDER})  # between the read and the write
            return writing(*args, **kwargs)

        reader.answer_approval = edited_first  # type: ignore[method-assign]
        api = StoreApprovals(reader, time.time)
        with pytest.raises(Conflict, match="changed since it was shown"):
            api.approve(request["id"], who="cli")
        row = kernel.store.get_approval(request["id"])
        assert (row["state"], row["sig"]) == ("pending", None)
        kernel.queue.sweep()
        assert _rejected(kernel, request["id"])[0]["detail"]["error"] == "CONFLICT"
        # The neighbour: the row as it is, answered bare, applies.
        _write(db_path, request["id"], {"labels": labels})
        StoreApprovals(SQLiteStore(db_path, writer=False), time.time).approve(
            request["id"], who="cli")
        await _until(done, "t")
        reader.close()
    assert (root / "exports" / "t").read_text() == "tok-123"
