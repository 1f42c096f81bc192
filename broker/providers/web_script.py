"""The approvals page's one script (served as `page.js` below the page's secret root; the
Content-Security-Policy allows no other, inline or elsewhere): it asks the server for the
pending rows every second, adds a row for each new request and drops the rows of requests
that are no longer pending (answered elsewhere, expired or cancelled). Rows already shown
are left as they are, so a half-typed answer or a chosen scope stays. The rows come from the
server, rendered by the same code as the page (`web_rows`): the script builds nothing out of
a request's text itself, and what it parses cannot run (a parsed document's scripts never
do, and the policy allows none)."""

POLL_MS = 1000

SCRIPT = """"use strict";
(() => {
  const body = () => document.querySelector("#requests tbody");
  async function refresh() {
    let response;
    try {
      response = await fetch("rows", {cache: "no-store", credentials: "same-origin"});
    } catch (error) {
      return;  // the server is gone for now: try again at the next tick
    }
    if (!response.ok) return;
    const parsed = new DOMParser().parseFromString(
      "<table><tbody>" + await response.text() + "</tbody></table>", "text/html");
    const fresh = Array.from(parsed.querySelectorAll("tbody > tr[id]"));
    const pending = new Set(fresh.map((row) => row.id));
    for (const row of Array.from(body().children)) {
      if (!pending.has(row.id)) row.remove();
    }
    for (const row of fresh) {
      if (!document.getElementById(row.id)) body().appendChild(document.adoptNode(row));
    }
    const empty = body().children.length === 0;
    document.getElementById("empty").hidden = !empty;
    document.getElementById("requests").hidden = empty;
  }
  setInterval(refresh, POLL_MS);
})();
""".replace("POLL_MS", str(POLL_MS))
