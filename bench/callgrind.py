"""Instructions of a measured loop alone, under callgrind: repeatable on a loaded machine,
unlike time. The loop's module runs it between two `os.getppid()` marks
(`--dump-before=getppid` splits the profile there: the second part is the loop).

    instructions("bench.steps_callgrind", ["--loop", "100", "20"], per=2000)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def instructions(module: str, args: list[str], per: int, keep: Path | None = None) -> int:
    """Instructions of `python -m module *args`'s marked loop, divided by `per`. `keep`: a
    path to copy the loop's profile to (for `callgrind_annotate --inclusive=yes`)."""
    with tempfile.TemporaryDirectory(prefix="libos-cg-out-") as out:
        base = Path(out, "cg")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=getppid",
             f"--callgrind-out-file={base}", sys.executable, "-m", module, *args],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        profile = Path(f"{base}.2")
        if keep is not None:
            keep.write_bytes(profile.read_bytes())
        for line in profile.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) // per
    raise RuntimeError(f"no totals in {module}'s loop profile")
