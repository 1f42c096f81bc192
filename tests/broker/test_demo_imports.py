"""What `libos demo` runs (a kernel on SQLite, a scripted planner, no fetch) imports none of
the code only other set-ups use: each is imported where it is first used (issue 17: the
demo's start-up). A fresh interpreter runs a scripted process to its end, then looks at
sys.modules; the neighbour shows the same modules do arrive once they are used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import bare_env

UNUSED = (
    "broker.planner.chat",  # a model's planner (`planner.factory`)
    "importlib.resources",  # (`store.migrations`: its files are read from its directory)
    "cryptography.hazmat.primitives.serialization.ssh",  # (`store.keys`, but to write a key)
    "broker.providers.net",  # the HTTP provider (`kernel.services`, `syscalls.net`)
)

CHILD = r"""
import sys, tempfile, trio
from pathlib import Path
from broker import Kernel
from broker.kernel.image import AgentImage

PLAN = {"kind": "scripted", "actions": [{"exit": 0, "result": "done"}]}

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        async with Kernel.open(Path(tmp) / "libos.db") as kernel:
            await kernel.register_image(AgentImage("a", planner=PLAN))
            pid = kernel.spawn("a")
            status = await kernel.wait(pid, timeout=30)
            assert status["result"] == "done", status
            kernel.verify_audit()
            if sys.argv[1] == "use":
                assert kernel.net.limits.max_redirects > 0  # made when first asked for
    if sys.argv[1] == "use":
        from broker.planner.factory import planner_from_settings
        settings = {"kind": "openai", "model": "m", "api_key_env": "NO_SUCH_KEY"}
        planner_from_settings(settings, image="a", tools=list)
    print(" ".join(m for m in sys.argv[2:] if m in sys.modules))

trio.run(main)
"""


def _imported(tmp_path: Path, mode: str) -> set[str]:
    """Which of `UNUSED` a fresh interpreter has imported after it ran (`mode` "run"), or
    after it also used each (`mode` "use")."""
    done = subprocess.run([sys.executable, "-c", CHILD, mode, *UNUSED], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[2],
                          env=bare_env(LIBOS_AUDIT_KEY=str(tmp_path / "audit.key")))
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_the_demos_set_up_imports_no_code_it_does_not_use(tmp_path: Path) -> None:
    _imported(tmp_path, "run")  # makes the audit key, as a broker's first start does
    assert _imported(tmp_path, "run") == set()


def test_the_same_code_is_imported_once_it_is_used(tmp_path: Path) -> None:
    """A model's planner, a new audit key (written as PEM by `serialization`), the HTTP
    provider (a fetch's: tests/broker/syscalls/test_net_import.py makes one)."""
    assert _imported(tmp_path, "use") == set(UNUSED) - {"importlib.resources"}


def test_the_key_loaders_are_those_serialization_gives() -> None:
    """`store.keys` loads PEM with the functions `serialization` re-exports, from where they
    are made: the same objects, so a key is read exactly as `serialization` would read it."""
    from cryptography.hazmat.bindings._rust import openssl
    from cryptography.hazmat.primitives import serialization

    assert serialization.load_pem_private_key is openssl.keys.load_pem_private_key
    assert serialization.load_pem_public_key is openssl.keys.load_pem_public_key
