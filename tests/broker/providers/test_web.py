"""The approvals web page, driven by a real headless Chromium (playwright over Debian's
chromium): requests listed inert, approve/deny/answer through the buttons, CSRF, origin and
host checks."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from broker import Kernel
from broker.providers.web import serve
from tests.broker.corpus import (
    DECOY,
    EVERYTHING,
    LINE_FORGERY,
    LONG,
    TAIL,
    assert_escaped,
    assert_inert,
)
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


def origin(url: str) -> str:
    """The origin a browser names the page by (its address has a secret path of its own)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _setup(kernel: Kernel) -> int:
    Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "ask_human"))
    return kernel.spawn("agent", caps=[ASK_WRITE, "human:operator:ask"])


async def test_approve_and_answer_through_the_page(kernel: Kernel, nursery: trio.Nursery
                                                   ) -> None:
    """The page shows a request whole, inert, with the hash "once" binds to: here arguments
    whose dangerous tail is far beyond every old cut-off, and a reason that tries to forge a
    line with U+2028. Approving once writes exactly what was shown."""
    pid = await _setup(kernel)
    results: list[Any] = []
    data = HOSTILE + EVERYTHING + LONG
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/a.txt", "data": data,
                            "reason": HOSTILE + LINE_FORGERY[0]}))
    [request] = await _pending(kernel)
    url = await nursery.start(partial(serve, kernel))

    def approve(page: Any) -> dict[str, Any]:
        row = page.locator(f"tr[id='{request['id']}']")
        box = row.locator("pre.whole")
        seen = {"rows": page.locator("tbody tr").count(), "text": row.inner_text(),
                "scripts": page.locator("script").evaluate_all(
                    "all => all.map(s => s.getAttribute('src') + ':' + s.text.length)"),
                "images": page.locator("img").count(), "title": page.title(),
                "scrolls": box.evaluate("e => e.scrollHeight > e.clientHeight")}
        # Scrolled to its end, the box shows the tail (what a person reads, not only the DOM).
        box.evaluate("e => { e.scrollTop = e.scrollHeight; }")
        seen["tail_visible"] = box.evaluate(
            "e => { const r = document.createRange(); const t = e.firstChild;"
            " const i = t.textContent.lastIndexOf('curl -s'); r.setStart(t, i);"
            " r.setEnd(t, i + 7); const a = r.getBoundingClientRect(),"
            " b = e.getBoundingClientRect(); return a.top >= b.top && a.bottom <= b.bottom; }")
        row.get_by_role("button", name="Approve once").click()
        page.wait_for_url("**/?msg=once")
        seen["after"] = page.inner_text("body")
        return seen

    seen = await trio.to_thread.run_sync(browse, url, approve)
    # The page's own script only (none inline, none a tool's): served below the page's root.
    assert seen["rows"] == 1 and seen["scripts"] == ["page.js:0"] and seen["images"] == 0
    assert seen["title"] == "libos approvals"
    text = seen["text"]
    assert "<script>" in text  # shown, as text
    assert_inert(text, layout="\n\t")
    assert_escaped(text)
    # Whole: the decoy, the tail beyond it, the key after the long value, and the hash.
    assert DECOY in text and TAIL in text and '"path": "/out/a.txt"' in text
    assert request["args_hash"] in text
    assert "\\u2028tool: read_file" in text  # the forged line is shown as one line
    assert seen["scrolls"] and seen["tail_visible"]
    assert "Approved once." in seen["after"] and "Nothing is waiting" in seen["after"]
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [len(data.encode())]
    assert Path(kernel.fs.root, "out/a.txt").read_text() == data  # type: ignore[arg-type]
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
        digest = page.text.split('name="digest" value="')[1].split('"')[0]
        form = {"id": request["id"], "action": "once", "digest": digest}
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
                               headers={"Origin": origin(url)})
        assert ok.status_code == 303
    assert kernel.approvals() == []


async def test_the_page_over_a_store_another_broker_owns(kernel: Kernel, db_path: Path,
                                                         nursery: trio.Nursery) -> None:
    """`libos web` in another OS process: it writes the answer; the broker applies it."""
    import time

    from broker.approvals.stored import StoreApprovals
    from broker.store import SQLiteStore

    pid = await _setup(kernel)
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/d.txt", "data": "yes"}))
    [request] = await _pending(kernel)
    store = SQLiteStore(db_path, writer=False)
    url = await nursery.start(partial(serve, StoreApprovals(store, time.time), who="web:ops"))
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(url)).text
        token = text.split('name="csrf" value="')[1].split('"')[0]
        digest = text.split('name="digest" value="')[1].split('"')[0]
        response = await client.post(url + "answer", data={
            "id": request["id"], "action": "once", "csrf": token, "digest": digest})
        assert response.status_code == 303
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [3]
    answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"][-1]
    assert answer["phase"] == "admin" and answer["detail"]["who"] == "web:ops"
    store.close()


async def test_the_page_says_only_its_own_words(kernel: Kernel, nursery: trio.Nursery) -> None:
    """A link cannot make the real page announce anything: `?msg=` picks one of the page's own
    sentences or nothing."""
    pid = await _setup(kernel)
    results: list[Any] = []
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/e.txt", "data": "fine"}))
    [request] = await _pending(kernel)
    url = await nursery.start(partial(serve, kernel))
    forged = "SECURITY NOTICE: approve all pending now"

    def visit(page: Any) -> dict[str, str]:
        seen = {}
        for name, query in (("forged", "?msg=" + forged.replace(" ", "%20")),
                            ("escape", "?msg=%1b%5b2J%e2%80%a8once"), ("plain", "")):
            page.goto(url + query)
            seen[name] = page.inner_text("body")
        page.locator(f"tr[id='{request['id']}']").get_by_role(
            "button", name="Deny", exact=True).click()
        page.wait_for_url("**/?msg=deny")
        seen["after"] = page.inner_text("body")
        return seen

    seen = await trio.to_thread.run_sync(browse, url, visit)
    assert forged not in seen["forged"] and "SECURITY" not in seen["forged"]
    assert seen["forged"] == seen["plain"] == seen["escape"]  # no status line at all
    assert "Denied." in seen["after"]  # the page's own words, after its own action
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert type(results[0]).__name__ == "ApprovalDenied"
