"""The approvals web page, driven by a real headless Chromium (playwright over Debian's
chromium): requests listed inert, approve/deny/answer through the buttons, CSRF, origin and
host checks."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker import Kernel
from broker.providers.web import serve
from tests.broker.kernel.test_approvals import ASK_WRITE, NEEDS, _collect, _pending
from tests.conftest import ALL_BUILTINS, open_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="chromium is not installed (.ci/run installs it)")

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">\x1b[2J'


def browse(url: str, steps: Any) -> Any:
    """Run `steps(page)` in a fresh headless Chromium (sync playwright, in a worker thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            result = steps(page)
            assert dialogs == [], "a script ran"
            return result
        finally:
            browser.close()


async def _setup(kernel: Kernel) -> int:
    Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "ask_human"))
    return kernel.spawn("agent", caps=[ASK_WRITE, "human:operator:ask"])


async def test_approve_and_answer_through_the_page(kernel: Kernel, nursery: trio.Nursery
                                                   ) -> None:
    pid = await _setup(kernel)
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/a.txt", "data": HOSTILE + "x" * 1000,
                            "reason": HOSTILE}))
    [request] = await _pending(kernel)
    url = await nursery.start(partial(serve, kernel))

    def approve(page: Any) -> dict[str, Any]:
        row = page.locator(f"tr[id='{request['id']}']")
        seen = {"rows": page.locator("tbody tr").count(), "text": row.inner_text(),
                "scripts": page.locator("script").count(),
                "images": page.locator("img").count(), "title": page.title()}
        row.get_by_role("button", name="Approve once").click()
        page.wait_for_url("**/?msg=once")
        seen["after"] = page.inner_text("body")
        return seen

    seen = await trio.to_thread.run_sync(browse, url, approve)
    assert seen["rows"] == 1 and seen["scripts"] == 0 and seen["images"] == 0
    assert seen["title"] == "libos approvals"
    assert "<script>" in seen["text"] and "\\x1b" in seen["text"]  # shown, as text
    assert "x" * 400 not in seen["text"]  # long values cut
    assert "Nothing is waiting" in seen["after"]
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [len(HOSTILE) + 1000]
    answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"][-1]
    assert answer["detail"]["who"] == "web" and answer["detail"]["answer"] == "once"

    # A question, answered in the text field.
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "ask_human", {"question": "How many? " + HOSTILE,
                           "schema": {"type": "integer"}}))
    [question] = await _pending(kernel)

    def answer_it(page: Any) -> str:
        row = page.locator(f"tr[id='{question['id']}']")
        row.get_by_label(f"answer to {question['id']}").fill("not a number")
        row.get_by_role("button", name="Answer").click()
        refused = page.inner_text("body")
        page.goto(url)
        row = page.locator(f"tr[id='{question['id']}']")
        row.get_by_label(f"answer to {question['id']}").fill("7")
        row.get_by_role("button", name="Answer").click()
        page.wait_for_url("**/?msg=answer")
        return refused

    refused = await trio.to_thread.run_sync(browse, url, answer_it)
    assert "INVALID_ARGUMENT" in refused
    with trio.fail_after(5):
        while len(results) < 2:
            await trio.sleep(0.01)
    assert results[1] == 7


async def test_deny_always_through_the_page(kernel: Kernel, nursery: trio.Nursery) -> None:
    pid = await _setup(kernel)
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/b.txt", "data": "x"}))
    [request] = await _pending(kernel)
    url = await nursery.start(partial(serve, kernel))

    def deny(page: Any) -> None:
        page.locator(f"tr[id='{request['id']}']").get_by_role(
            "button", name="Deny always").click()
        page.wait_for_url("**/?msg=deny-always")

    await trio.to_thread.run_sync(browse, url, deny)
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert type(results[0]).__name__ == "ApprovalDenied"
    assert any(c["effect"] == "deny" for c in kernel.capabilities(pid))


async def test_posts_need_the_token_the_origin_and_the_host(kernel: Kernel,
                                                            nursery: trio.Nursery) -> None:
    pid = await _setup(kernel)
    nursery.start_soon(_collect, [], kernel.call_tool(
        pid, "write_file", {"path": "/out/c.txt", "data": "x"}))
    [request] = await _pending(kernel)
    url = await nursery.start(partial(serve, kernel))
    async with httpx.AsyncClient(trust_env=False) as client:
        page = await client.get(url)
        assert "default-src 'none'" in page.headers["content-security-policy"]
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        form = {"id": request["id"], "action": "once"}
        for data, headers, status in (
                (form, {}, 403),  # no token
                ({**form, "csrf": "wrong"}, {}, 403),
                ({**form, "csrf": token}, {"Origin": "http://evil.example"}, 403),
                ({**form, "csrf": token}, {"Host": "evil.example"}, 421),
                ({**form, "csrf": token, "id": "apr_unknown"}, {}, 404)):
            response = await client.post(url + "answer", data=data, headers=headers)
            assert response.status_code == status
        assert kernel.approvals()[0]["state"] == "pending"
        ok = await client.post(url + "answer", data={**form, "csrf": token},
                               headers={"Origin": url.rstrip("/")})
        assert ok.status_code == 303
    assert kernel.approvals() == []


async def test_the_page_over_a_store_another_broker_owns(kernel: Kernel, db_path: Path,
                                                         nursery: trio.Nursery) -> None:
    """`libos web` in another OS process: it writes the answer; the broker applies it."""
    import time

    from broker.kernel.approvals import StoreApprovals
    from broker.store import SQLiteStore

    pid = await _setup(kernel)
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/d.txt", "data": "yes"}))
    [request] = await _pending(kernel)
    store = SQLiteStore(db_path, writer=False)
    url = await nursery.start(partial(serve, StoreApprovals(store, time.time), who="web:ops"))
    async with httpx.AsyncClient(trust_env=False) as client:
        token = (await client.get(url)).text.split('name="csrf" value="')[1].split('"')[0]
        response = await client.post(url + "answer", data={"id": request["id"],
                                                           "action": "once", "csrf": token})
        assert response.status_code == 303
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [3]
    answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"][-1]
    assert answer["phase"] == "admin" and answer["detail"]["who"] == "web:ops"
    store.close()
