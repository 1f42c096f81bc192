"""Instructions of a measured loop alone, under callgrind: repeatable on a loaded machine,
unlike time. The loop's module runs it between two `os.getppid()` marks
(`--dump-before=getppid` splits the profile there: the second part is the loop). A loop with
untimed setup between its steps marks each step (mark, step, mark): every even-numbered part
is measured, and they are added up.

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
    path to copy the loop's profile to (for `callgrind_annotate --inclusive=yes`; the first
    measured part only, when there are several)."""
    with tempfile.TemporaryDirectory(prefix="libos-cg-out-") as out:
        base = Path(out, "cg")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=getppid",
             f"--callgrind-out-file={base}", sys.executable, "-m", module, *args],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if keep is not None:
            keep.write_bytes(Path(f"{base}.2").read_bytes())
        total, part = 0, 2
        while Path(f"{base}.{part}").exists():  # (what follows the last mark is `base` itself)
            total += _totals(Path(f"{base}.{part}"))
            part += 2
        if part == 2:
            raise RuntimeError(f"no marked loop in {module}'s profile")
        return total // per


def _totals(profile: Path) -> int:
    for line in profile.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {profile}")
