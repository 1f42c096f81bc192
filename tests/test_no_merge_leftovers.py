"""No file of the repository keeps a merge's conflict markers (a README once shipped two
versions of a section side by side, and no test of its content noticed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    return [REPO / n.decode() for n in names if n and not n.endswith((b".png", b".wasm",
                                                                     b".cwasm", b".lock"))]


def test_no_tracked_file_keeps_conflict_markers() -> None:
    left = []
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        left += [f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
                 for m in MARKER.finditer(text)]
    assert left == []
