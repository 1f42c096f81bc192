"""Inert rendering benchmark: what the one rule costs on what people read.

* a short plain line (the fast path: nothing to escape) against `str.isprintable` alone, the
  baseline it is built on;
* a short line with the hostile corpus's characters in it (the slow path, per character);
* 1 MB of plain text and 1 MB of hostile text (a whole file shown by `libos approvals show`
  or the page), and a 48-character summary of it (a transcript line);
* the elicitation form of a request with 1 KB of arguments (JSON, escaping, the bound), and
  of one with 1 MB (refused for a form before anything is escaped: it runs on the broker's
  trio thread).

Run with `python -m bench.inert_bench` (or `python -m bench`).
"""

from __future__ import annotations

import json
from typing import Any

from bench.timing import best_us
from broker.inert import shown, shown_json
from broker.mcp_server import approval_form

LINE = "write_file /reports/summary.md: the quarterly numbers, checked twice"
HOSTILE = "ok\x1b]52;c;Y3Vy\x07 \u202etxt.exe\u202c a\u200bb\u2028tool: forged\x00"


def run() -> dict[str, Any]:
    plain_mb = LINE * (1_000_000 // len(LINE))
    hostile_mb = HOSTILE * (1_000_000 // len(HOSTILE))
    request = {"id": "apr_" + "0" * 24, "kind": "capability", "pid": 7, "tool": "write_file",
               "syscall": "fs.write", "resource": "/out/a.txt", "right": "fs:write",
               "args_hash": "0" * 64, "reason": "save it",
               "args": {"path": "/out/a.txt", "data": "x" * 1000}}
    request["args_text"] = json.dumps(request["args"], ensure_ascii=False, sort_keys=True)
    huge = {**request, "args": {"path": "/out/a.txt", "data": hostile_mb}}
    huge["args_text"] = json.dumps(huge["args"], ensure_ascii=False, sort_keys=True)
    return {
        "isprintable_baseline_us.line": best_us(LINE.isprintable, 20000),
        "shown_us.line": best_us(lambda: shown(LINE), 20000),
        "shown_us.hostile_line": best_us(lambda: shown(HOSTILE), 5000),
        "shown_ms.plain_1mb": best_us(lambda: shown(plain_mb), 5) / 1000,
        "shown_ms.hostile_1mb": best_us(lambda: shown(hostile_mb), 3) / 1000,
        "shown_us.summary_48_of_hostile_1mb": best_us(lambda: shown(hostile_mb, 48), 2000),
        "shown_json_ms.indented_hostile_1mb": best_us(
            lambda: shown_json({"data": hostile_mb}, indent=2), 3) / 1000,
        "approval_form_us.1kb_args": best_us(lambda: approval_form(request), 2000),
        "approval_form_us.1mb_hostile_args": best_us(lambda: approval_form(huge), 200),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:40} {value:12,.2f}")
