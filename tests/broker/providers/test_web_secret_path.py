"""The approvals page answers only whoever holds the address it printed (red team, lane
rspeople; MEDIUM). The page listens on 127.0.0.1, port 8765 by default, which every user and
every process of the host can reach; its CSRF token and the digests are in the page itself.
So a local user without the user's key (a database writer on this host, another account)
who knew only the port read the page as any browser would, with the right Host and Origin,
and posted "once": `libos web` signed it with the user's key, and the broker applied it (here
the agent exported the secret the person never saw asked for). Now every path the page serves
lies under a random secret printed with its address (`/SECRET/`): anything else is 404, no
form, no token, nothing answered. The neighbour: the person's own address shows the request
and its answer applies."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import trio

from broker.approvals.stored import StoreApprovals
from broker.store import SQLiteStore, answer_sig
from tests.broker.kernel.test_shown_answers_redteam24 import _page, _shown
from tests.broker.kernel.test_signed_answers_redteam21 import _exporting
from tests.broker.providers.test_web import origin


async def test_a_local_user_who_knows_only_the_port_answers_nothing(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        reader = SQLiteStore(db_path, writer=False)
        async with _page(StoreApprovals(reader, time.time)) as (client, url):
            port = urlsplit(url).port
            for bare in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
                page = await client.get(bare)
                if 'name="csrf"' in page.text:  # main: the whole page, its token with it
                    stolen = await _shown(client, bare, request["id"])
                else:  # what a database writer can make of the row alone
                    stolen = {"id": request["id"], "csrf": "x" * 43,
                              "digest": answer_sig.shown_digest(
                                  kernel.store.get_approval(request["id"]))}
                answered = await client.post(bare + "answer", data={**stolen,
                                                                    "action": "once"},
                                             headers={"Origin": origin(bare)})
                assert (page.status_code, answered.status_code) == (404, 404)
                assert request["id"] not in page.text
                for path in ("rows", "page.js", "answer", url.rsplit("/", 2)[1][:-1] + "/",
                             url.rsplit("/", 2)[1] + "x/"):  # a secret one short, one long
                    assert (await client.get(bare + path)).status_code == 404, path
            await trio.sleep(0.3)
            kernel.queue.sweep()
            row = kernel.store.get_approval(request["id"])
            assert (row["state"], row["sig"], done) == ("pending", None, [])
            # The neighbour: the address the page printed shows the request; its answer applies.
            assert urlsplit(url).path.count("/") == 2 and len(urlsplit(url).path) > 30
            shown = await _shown(client, url, request["id"])
            response = await client.post(url + "answer", data={**shown, "action": "once"},
                                         headers={"Origin": origin(url)})
            assert response.status_code == 303
            assert response.headers["location"] == urlsplit(url).path + "?msg=once"
            with trio.fail_after(10):
                while "t" not in done:
                    await trio.sleep(0.05)
        reader.close()
    assert (root / "exports" / "t").read_text() == "tok-123"
