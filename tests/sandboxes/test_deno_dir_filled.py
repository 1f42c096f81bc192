"""A tool cannot fill the disk through its service's DENO_DIR (red team, session 16).

With the emit cache off, Deno still keeps a module-analysis row for each module it loads in
the DENO_DIR's SQLite cache, keyed by its specifier: for a `data:` URL, the whole source. A
tool may `import()` as many distinct `data:` modules as its deadline allows: each wrote
about twice its size there, for the service's life (200 of 100 KB: 42 MB in a second). Each
file a sandbox writes is capped (`RLIMIT_FSIZE`, SIGXFSZ ignored: a write past it fails, Deno
goes on without caching it)."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest

from broker.errors import InvalidArgument
from sandboxes import deno_launch
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.testing import NullHost

FLOOD = b"""export default async function run(args: { n: number }): Promise<number> {
  const pad = "x".repeat(100_000);
  for (let i = 0; i < args.n; i++) {
    const src = `export default ${i}; // ${pad}`;
    await import("data:application/typescript," + encodeURIComponent(src));
  }
  return args.n;
}"""
CODE = ToolCode("flood", "ts", FLOOD, hashlib.sha256(FLOOD).hexdigest())


def _size(directory: str) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


async def test_a_tool_importing_data_modules_cannot_grow_the_deno_dir_past_its_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deno_launch, "FILE_LIMIT_MB", 4)  # (a test's flood, not 64 MiB's)
    async with DenoSandbox(refill=False) as driver:
        await driver.warm()
        before = _size(driver._env["DENO_DIR"])  # (the seed: Deno's node binary, linked)
        out = await driver.call(CODE, {"n": 200}, NullHost(), CallLimits(deadline=60))
        assert out == 200  # (the sandbox goes on: Deno caches no more)
        grown = _size(driver._env["DENO_DIR"]) - before
        assert grown < 3 * (4 << 20), f"{grown >> 20} MiB more in the DENO_DIR"
        # and the next call, in the same sandbox, still loads and runs its modules
        assert await driver.call(CODE, {"n": 3}, NullHost(), CallLimits(deadline=60)) == 3


async def test_every_sandbox_process_has_the_cap() -> None:
    async with DenoSandbox(refill=False) as driver:
        await driver.warm()
        [sb] = driver._all
        with open(f"/proc/{sb.process.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max file size"))
        assert str(deno_launch.FILE_LIMIT_MB << 20) in line
        with open(f"/proc/{sb.process.pid}/status") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1],
                          16)
        assert ignored & (1 << (25 - 1))  # SIGXFSZ: a write past the cap fails, not kills


async def test_a_checked_tool_importing_data_modules_leaves_no_file_per_module() -> None:
    """The registration checker (an image's tools: `image.register`) runs a tool's top-level
    code with Deno's emit cache on: each distinct TypeScript `data:` module it imported was
    transpiled into a file of its own in the DENO_DIR (242 files, 137 MB in one 5 s check,
    again at each registration), which no cap on a file's size bounds."""
    source = b"""const pad = "x".repeat(100_000);
for (let i = 0; i < 300; i++) {
  await import("data:application/typescript," +
               encodeURIComponent(`export const v: number = ${i}; // ${pad}`));
}
export default async function run(): Promise<number> { return 1; }"""
    async with DenoSandbox(refill=False) as driver:
        with contextlib.suppress(InvalidArgument):  # (its check may time out)
            await driver.prepare("flood", "ts", source)
        emitted = list(Path(driver._env["DENO_DIR"]).rglob("gen/**/*.js"))
        assert len(emitted) <= 4, f"{len(emitted)} modules transpiled into the DENO_DIR"
