"""Magic links for real, and mounts, inside the fs root: a procfs and an outside directory
bind-mounted in the tree (in a user and mount namespace of the test's own, so it needs no
privilege), attacked through the kernel in both of the provider's ways of opening a path
(mount_attacks.py plays them). Every magic link is refused with its audit record; a mount the
host made is crossed, as any directory of the tree (the same both ways)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.providers import beneath
from tests.conftest import bare_env

REPO = Path(__file__).resolve().parents[3]


def _played(way: str, tmp_path: Path) -> dict[str, str]:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespaces here: {probe.stderr!r}")
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "tests.broker.syscalls.mount_attacks", way,
         str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=bare_env(HOME=str(tmp_path), PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("way", ["openat2", "walk"])
def test_magic_links_of_a_procfs_inside_the_root_are_refused(way: str, tmp_path: Path) -> None:
    if way == "openat2" and not beneath.usable():
        pytest.skip("openat2 is not available on this host")
    results = _played(way, tmp_path)
    assert results.pop("way") == way
    assert results.pop("neighbour") == "neighbour"
    assert results.pop("outside mount") == "HOST\n"
    leaks = {k: v for k, v in results.items() if v not in ("NotCapable", "InvalidArgument")}
    assert leaks == {}, leaks
