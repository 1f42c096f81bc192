"""The approvals page in a real headless Chromium: new requests appear (and answered ones go)
without a reload; each shows its deadline and its process's image; "always" offers only
scopes within what was asked, and a wider one, forged past the page, is refused by the
broker and audited; a screenshot of a hostile request stays legible."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from broker import Kernel
from broker.approvals.stored import StoreApprovals
from broker.providers.web import serve
from broker.store import SQLiteStore
from tests.broker.corpus import EVERYTHING, LONG, assert_escaped, assert_inert
from tests.broker.kernel.test_approvals import ASK_WRITE, NEEDS, _collect, _pending
from tests.broker.providers.test_web import HOSTILE, browse, pytestmark  # noqa: F401
from tests.conftest import ALL_BUILTINS, open_image

WAIT_MS = 10_000  # the page polls every second; a loaded machine gets ten


async def _agent(kernel: Kernel) -> int:
    Path(kernel.fs.root, "out", "sub", "deep").mkdir(parents=True)  # type: ignore[attr-defined]
    await open_image(kernel, "writer", needs=NEEDS, tools=(*ALL_BUILTINS, "ask_human"))
    return kernel.spawn("writer", caps=[ASK_WRITE, "human:operator:ask"])


async def _ask(kernel: Kernel, nursery: trio.Nursery, results: list[Any], pid: int,
               path: str, **extra: Any) -> dict[str, Any]:
    before = len(kernel.approvals())
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": path, "data": "x", **extra}))
    return (await _pending(kernel, before + 1))[-1]


async def test_new_requests_appear_and_answered_ones_go_without_a_reload(
        kernel: Kernel, nursery: trio.Nursery) -> None:
    pid = await _agent(kernel)
    results: list[Any] = []
    url = await nursery.start(partial(serve, kernel))

    def ask(path: str, **extra: Any) -> dict[str, Any]:
        return trio.from_thread.run(partial(_ask, kernel, nursery, results, pid, path,
                                            **extra))

    def watch(page: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {"empty": page.locator("#empty").is_visible()}
        page.evaluate("window.loadedOnce = 'yes'")  # gone if the page reloads
        first = ask("/out/a.txt")
        page.wait_for_selector(f"tr[id='{first['id']}']", timeout=WAIT_MS)
        # A question arrives; the person starts typing an answer to it.
        question = trio.from_thread.run(partial(_question, kernel, nursery, results, pid))
        field = page.get_by_label(f"answer to {question['id']}")
        field.wait_for(timeout=WAIT_MS)
        field.fill("half typed")
        # A hostile request arrives while they type.
        hostile = ask("/out/b.txt", reason=HOSTILE + EVERYTHING)
        row = page.locator(f"tr[id='{hostile['id']}']")
        row.wait_for(timeout=WAIT_MS)
        seen["hostile"] = row.inner_text()
        seen["typed"] = field.input_value()
        # The first is answered elsewhere: its row goes.
        trio.from_thread.run_sync(kernel.deny, first["id"])
        page.locator(f"tr[id='{first['id']}']").wait_for(state="detached", timeout=WAIT_MS)
        seen["rows"] = page.locator("tbody tr").count()
        seen["same page"] = page.evaluate("window.loadedOnce")
        seen["navigations"] = page.evaluate(
            "performance.getEntriesByType('navigation').length")
        seen["title"] = page.title()
        seen["scripts"] = page.locator("script").count()
        seen["hostile_id"] = hostile["id"]
        return seen

    seen = await trio.to_thread.run_sync(browse, url, watch)
    assert seen["empty"]
    assert seen["same page"] == "yes" and seen["navigations"] == 1
    assert seen["rows"] == 2 and seen["typed"] == "half typed"
    assert_inert(seen["hostile"], layout="\n\t")
    assert_escaped(seen["hostile"])
    assert "<script>" in seen["hostile"]  # shown as text
    assert seen["title"] == "libos approvals" and seen["scripts"] == 1  # nothing ran or came
    assert type(results[0]).__name__ == "ApprovalDenied"


async def _question(kernel: Kernel, nursery: trio.Nursery, results: list[Any],
                    pid: int) -> dict[str, Any]:
    before = len(kernel.approvals())
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "ask_human", {"question": "Ship it?", "choices": ["yes", "no"]}))
    return (await _pending(kernel, before + 1))[-1]


async def test_a_request_shows_its_deadline_and_its_processs_image(
        kernel: Kernel, nursery: trio.Nursery) -> None:
    pid = await _agent(kernel)
    request = await _ask(kernel, nursery, [], pid, "/out/a.txt")
    url = await nursery.start(partial(serve, kernel))

    def look(page: Any) -> dict[str, str]:
        row = page.locator(f"tr[id='{request['id']}']")
        deadline = row.locator("time.deadline")
        return {"text": row.inner_text(), "datetime": deadline.get_attribute("datetime")}

    seen = await trio.to_thread.run_sync(browse, url, look)
    moment = datetime.fromtimestamp(request["deadline"], UTC)
    assert seen["datetime"] == moment.isoformat()
    assert moment.strftime("%Y-%m-%d %H:%M:%S UTC") in seen["text"]
    assert f"{pid} (writer:1)" in seen["text"]
    assert "fs:write on /out/** (ask)" in seen["text"]


async def test_always_offers_only_scopes_within_what_was_asked(
        kernel: Kernel, nursery: trio.Nursery) -> None:
    pid = await _agent(kernel)
    results: list[Any] = []
    request = await _ask(kernel, nursery, results, pid, "/out/sub/deep/a.txt")
    url = await nursery.start(partial(serve, kernel))

    def choose(page: Any) -> list[str]:
        row = page.locator(f"tr[id='{request['id']}']")
        scopes = row.get_by_role("group", name=f"always for {request['id']}")
        offered = scopes.get_by_role("radio").evaluate_all(
            "all => all.map(o => o.value + (o.checked ? ' (checked)' : ''))")
        scopes.get_by_role("radio", name="/out/sub/**", exact=True).check()
        row.get_by_role("button", name="Approve always").click()
        page.wait_for_url("**/?msg=always")
        return offered

    offered = await trio.to_thread.run_sync(browse, url, choose)
    # Narrowest first, and chosen until the person chooses otherwise; nothing wider than asked.
    assert offered == ["/out/sub/deep/a.txt (checked)", "/out/sub/deep/**", "/out/sub/**",
                       "/out/**"]
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [1]
    assert [(c["scope"], c["effect"]) for c in kernel.capabilities(pid)
            if c["effect"] == "allow" and c["kind"] == "fs"] == [("/out/sub/**", "allow")]
    # Within the chosen scope: no question. Beside it: asked again.
    assert await kernel.call_tool(pid, "write_file", {"path": "/out/sub/b.txt", "data": "y"})
    await _ask(kernel, nursery, results, pid, "/out/c.txt")


async def _forge(url: str, request_id: str, scope: str,
                 action: str = "always") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(url)).text
        token = text.split('name="csrf" value="')[1].split('"')[0]
        digest = text.split('name="digest" value="')[1].split('"')[0]  # (the one request)
        return await client.post(url + "answer", data={
            "id": request_id, "action": action, "scope": scope, "csrf": token,
            "digest": digest})


async def test_a_wider_scope_forged_past_the_page_is_refused_and_audited(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    """The page offers nothing wider than the asking capability; a POST that carries a wider
    scope anyway (a tampered page, a script on loopback with the token) is refused by the
    broker's own rule, for the kernel and for the store another broker owns, and the refusal
    is an audit record. The request stays pending, and a fair answer still works."""
    pid = await _agent(kernel)
    results: list[Any] = []
    request = await _ask(kernel, nursery, results, pid, "/out/sub/a.txt")
    store = SQLiteStore(db_path, writer=False)
    direct = await nursery.start(partial(serve, kernel))
    other = await nursery.start(partial(serve, StoreApprovals(store, time.time),
                                        who="web:ops"))

    def tamper(page: Any) -> str:
        # The person's own page, altered in the browser: an option the server never offered.
        scopes = page.get_by_role("group", name=f"always for {request['id']}")
        scopes.evaluate("s => { const o = document.createElement('input'); o.type = 'radio';"
                        " o.name = 'scope'; o.value = '/**'; s.appendChild(o);"
                        " o.checked = true; }")
        page.locator(f"tr[id='{request['id']}']").get_by_role(
            "button", name="Approve always").click()
        return page.inner_text("body")

    refused = await trio.to_thread.run_sync(browse, direct, tamper)
    assert "NOT_CAPABLE" in refused and "wider than the asking capability" in refused
    for url in (direct, other):
        wider = await _forge(url, request["id"], "/**")
        assert wider.status_code == 403 and "NOT_CAPABLE" in wider.text
        beside = await _forge(url, request["id"], "/elsewhere/**")  # does not cover it
        assert beside.status_code == 400 and "INVALID_ARGUMENT" in beside.text
    assert kernel.approvals()[0]["state"] == "pending" and not results
    with trio.fail_after(5):  # the store's refusals are audited by the broker that owns it
        while len([r for r in kernel.audit() if r["syscall"] == "approval.answer"]) < 5:
            kernel.queue.sweep()
            await trio.sleep(0.05)
    rejected = [(r["phase"], r["detail"]["error"], r["detail"].get("who"))
                for r in kernel.audit() if r["syscall"] == "approval.answer"]
    assert rejected == [("rejected", "NOT_CAPABLE", "web"), ("rejected", "NOT_CAPABLE", "web"),
                        ("rejected", "INVALID_ARGUMENT", "web"),
                        ("rejected", "NOT_CAPABLE", "web:ops"),
                        ("rejected", "INVALID_ARGUMENT", "web:ops")]
    assert not [c for c in kernel.capabilities(pid) if c["effect"] == "allow"
                and c["kind"] == "fs"]
    fair = await _forge(other, request["id"], "/out/sub/**")
    assert fair.status_code == 303
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results == [1]
    store.close()


LEGIBLE_PX = 13  # the smallest font size a request's text may have


async def test_a_screenshot_of_a_hostile_request_is_legible(
        kernel: Kernel, nursery: trio.Nursery, tmp_path: Path) -> None:
    """At a laptop's window size, a request made of the hostile corpus and a path with no
    place to break: the page never scrolls sideways; every piece of the request's text is
    at least 13 px, inside the window; and the screenshot of the row has real ink, dark on
    light at a contrast of at least 7:1, and is neither blank nor a solid block."""
    pid = await _agent(kernel)
    long_name = "/out/" + "x" * 400 + ".txt"
    before = len(kernel.approvals())
    nursery.start_soon(_collect, [], kernel.call_tool(pid, "write_file", {
        "path": long_name, "data": EVERYTHING + LONG, "reason": HOSTILE + EVERYTHING}))
    request = (await _pending(kernel, before + 1))[-1]
    url = await nursery.start(partial(serve, kernel))
    shot = tmp_path / "approvals.png"

    def measure(page: Any) -> dict[str, Any]:
        page.set_viewport_size({"width": 1280, "height": 800})
        row = page.locator(f"tr[id='{request['id']}']")
        row.screenshot(path=str(shot))
        seen = page.evaluate("""rid => {
            const row = document.getElementById(rid);
            const texts = [...row.querySelectorAll('dt, dd, pre, button, legend, label, .hash')];
            const sizes = texts.map(e => parseFloat(getComputedStyle(e).fontSize));
            const boxes = texts.map(e => e.getBoundingClientRect());
            return {scrollWidth: document.documentElement.scrollWidth,
                    width: window.innerWidth, smallest: Math.min(...sizes),
                    outside: boxes.filter(b => b.left < 0 || b.right > window.innerWidth)
                                  .length,
                    empty: boxes.filter(b => b.width === 0 || b.height === 0).length};
        }""", request["id"])
        seen.update(ink(page, shot.read_bytes()))
        return seen

    seen = await trio.to_thread.run_sync(browse, url, measure)
    assert seen["scrollWidth"] <= seen["width"], seen  # no sideways scrolling
    assert seen["smallest"] >= LEGIBLE_PX and seen["outside"] == 0 and seen["empty"] == 0
    assert 0.01 <= seen["ink"] <= 0.5, seen  # text, not blank and not a solid block
    assert seen["contrast"] >= 7, seen


def ink(page: Any, png: bytes) -> dict[str, float]:
    """The screenshot, read back by the browser's own decoder (in a blank page: the
    approvals page's policy allows no images): the share of dark pixels (text) and the
    contrast between the commonest colour (the background) and the darkest."""
    import base64

    blank = page.context.browser.new_page()
    return blank.evaluate("""async data => {
        const image = new Image();
        image.src = 'data:image/png;base64,' + data;
        await image.decode();
        const canvas = new OffscreenCanvas(image.width, image.height);
        const context = canvas.getContext('2d');
        context.drawImage(image, 0, 0);
        const pixels = context.getImageData(0, 0, image.width, image.height).data;
        const channel = c => { c /= 255; return c <= 0.03928 ? c / 12.92
                                                 : Math.pow((c + 0.055) / 1.055, 2.4); };
        const counts = new Map();
        let dark = 0, darkest = 1;
        for (let i = 0; i < pixels.length; i += 4) {
            const l = 0.2126 * channel(pixels[i]) + 0.7152 * channel(pixels[i + 1])
                    + 0.0722 * channel(pixels[i + 2]);
            const key = Math.round(l * 100);
            counts.set(key, (counts.get(key) || 0) + 1);
            if (l < 0.2) dark++;
            darkest = Math.min(darkest, l);
        }
        const background = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0] / 100;
        return {ink: dark / (pixels.length / 4),
                contrast: (Math.max(background, darkest) + 0.05)
                          / (Math.min(background, darkest) + 0.05)};
    }""", base64.b64encode(png).decode())
