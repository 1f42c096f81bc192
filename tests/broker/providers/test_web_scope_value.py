"""The approvals page's "always" choices post the scope the broker offered, not its shown
form (red team, lane rspeople; LOW: it failed closed). The narrowest choice, checked by
default, is the resource itself; a resource with a character the rule escapes (a zero-width
space in a file name the model chose) was posted as `\\u200b` text, which covers nothing the
request asked: the person's "Approve always" was refused (INVALID_ARGUMENT). Now the choice
carries the scope; its label is still inert. Driven in a real headless Chromium."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.providers.web import serve
from tests.broker.corpus import assert_inert
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.providers.test_web import browse, pytestmark  # noqa: F401
from tests.broker.test_cli_approvals import _ask

RESOURCE = "/out/a\u200bb.txt"


async def test_approve_always_for_a_resource_the_rule_escapes(
        kernel: Kernel, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    request = await _ask(kernel, nursery, pid, results, path=RESOURCE, data="x")
    assert request["always_scopes"][0] == RESOURCE
    url = await nursery.start(partial(serve, kernel))

    def always(page: Any) -> str:
        row = page.locator(f"tr[id='{request['id']}']")
        label = row.get_by_role("group", name=f"always for {request['id']}").inner_text()
        row.get_by_role("button", name="Approve always").click()
        page.wait_for_url("**/?msg=always")
        return label

    label = await trio.to_thread.run_sync(browse, url, always)
    assert "/out/a\\u200bb.txt" in label  # shown as its escape
    assert_inert(label)
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.05)
    assert results == [1]
    assert Path(kernel.fs.root, RESOURCE[1:]).read_text() == "x"  # type: ignore[attr-defined]
    assert (RESOURCE, "allow") in [(c["scope"], c["effect"]) for c in kernel.capabilities(pid)]
