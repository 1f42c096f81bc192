"""`LocalFs.write` whose truncation the kernel refuses: a typed error, the file as it was,
and no descriptor left open (its `ftruncate` ran before the `try` that closes it: each such
write leaked one). Landlock (ABI 3) refuses the truncation alone: a child process restricts
itself to no truncation anywhere, everything else as before, and writes through a real
provider."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from broker.providers import landlock

CHILD = r"""
import ctypes, os, sys
from broker.caps import Capability, CapabilityTable, normalize
from broker.providers import landlock
from broker.providers.fs import LocalFs

root = sys.argv[1]
fs = LocalFs(root)
with open(os.path.join(root, "f"), "w") as f:
    f.write("old")
table = CapabilityTable(1)
table.add(Capability("fs", "/**", frozenset({"write"}), owner=1))

def checked():
    return table.check_path("write", normalize("/f"), root=(), locate=fs.locate,
                            identify=fs.identify, now=0.0).proof

# Handle truncation only, and allow it nowhere.
attr = landlock._RulesetAttr(handled_access_fs=landlock.TRUNCATE)
ruleset = landlock._libc.syscall(landlock.SYS_CREATE_RULESET, ctypes.byref(attr),
                                 ctypes.c_size_t(8), ctypes.c_uint32(0))
landlock.restrict_self(ruleset)
os.close(ruleset)
appended = fs.write(checked(), b"+", append=True, exclusive=False)  # (what it keeps open)
before = len(os.listdir("/proc/self/fd"))
codes = []
for _ in range(5):
    try:
        fs.write(checked(), b"new", append=False, exclusive=False)
    except Exception as exc:
        codes.append(getattr(exc, "code", type(exc).__name__))
appended += fs.write(checked(), b"+", append=True, exclusive=False)
left = len(os.listdir("/proc/self/fd")) - before
print(repr((codes, left, appended, open(os.path.join(root, "f")).read())))
"""


@pytest.mark.skipif(landlock.abi_version() < 3, reason="needs Landlock ABI 3 (truncation)")
def test_a_refused_truncation_is_a_typed_error_and_leaks_no_descriptor(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    run = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert run.returncode == 0, run.stderr
    codes, left, appended, content = ast.literal_eval(run.stdout.strip())
    assert len(codes) == 5 and all(c in ("NOT_CAPABLE", "CONFLICT", "INVALID_ARGUMENT")
                                   for c in codes), codes
    assert left == 0  # each refused write closed what it opened
    assert appended == 2 and content == "old++"  # untouched by the refused ones; appends work
