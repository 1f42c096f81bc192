"""`libos mcp` (the real CLI, stdio and all) with one fault injected: a call of the tool
`read_file` on "/data/unwritable" gets a result the SDK's writer cannot write (a lone
surrogate in its structured content). No public path is left that makes one (the kernel
refuses such results), so it is injected where the server builds the reply. Run as
`python -m tests.broker.mcp_unwritable_server ARGS...` with `libos mcp`'s arguments."""

from __future__ import annotations

import sys
from typing import Any

from broker.cli import main
from broker.mcp_server import LibosMCP

MARKER = "unwritable"
_outcome = LibosMCP._outcome


def _unwritable_outcome(outcome: tuple[str, Any]) -> Any:
    result = _outcome(outcome)
    if outcome[0] == "ok" and MARKER in str(outcome[1]):
        result.structured_content = {"text": "a\ud800b"}
    return result


if __name__ == "__main__":
    LibosMCP._outcome = staticmethod(_unwritable_outcome)  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
