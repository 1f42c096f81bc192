"""Names in the host tree that are not UTF-8 text (made by a shell command, an archive, another
user): a process cannot name them (a lone surrogate in a frame is refused), but it can meet
them, as an entry of a directory it lists or as where a symlink leads. A listing leaves them
out and its record counts them; a path through one is a typed error with its audit record,
with no effect and no traceback, in both of the provider's ways of opening a path; the same
syscall on a neighbour still works."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import InvalidArgument, LibosError
from tests.broker.syscalls.path_attacks import NEIGHBOUR, RacyFs, Runner, plant

pytestmark = pytest.mark.usefixtures("fs_walk")

# Under /work/pub/raw: a file and a directory with a non-UTF-8 name, and links to them.
RAW_FILE, RAW_DIR = b"\xff.txt", b"\xfd-dir"
LINKS = {b"to_file": RAW_FILE, b"to_dangling": b"\xfe-not-yet", b"to_dir": RAW_DIR,
         b"to_nested": b"../raw/" + RAW_DIR + b"/f.txt"}


def _plant_raw(fs_root: Path) -> bytes:
    raw = os.fsencode(fs_root / "work/pub/raw")
    os.mkdir(raw)
    with open(raw + b"/" + RAW_FILE, "wb") as f:
        f.write(b"raw")
    os.mkdir(raw + b"/" + RAW_DIR)
    with open(raw + b"/" + RAW_DIR + b"/f.txt", "wb") as f:
        f.write(b"nested")
    for name, target in LINKS.items():
        os.symlink(target, raw + b"/" + name)
    return raw


def _refused(runner: Runner, op: str, args: dict[str, Any]) -> None:
    before = runner.kernel.store.head_seq
    with pytest.raises(LibosError) as refused:
        runner.call("main", op, args)
    assert type(refused.value) is InvalidArgument, refused.value
    assert "UTF-8" in refused.value.message
    assert runner._audited(before, op, refused.value.code), (op, args)


ATTEMPTS = [
    (op, {"path": f"raw/{name.decode()}", **extra}) for name in LINKS for op, extra in (
        ("fs.read", {}), ("fs.read", {"binary": True}), ("fs.write", {"data": "x"}),
        ("fs.write", {"data": "x", "append": True}), ("fs.stat", {}), ("fs.list", {}),
        ("fs.mkdir", {}), ("fs.chdir", {}), ("fs.remove", {}))]


async def test_a_name_that_is_not_utf8_is_a_typed_error_with_its_record(tmp_path: Path) -> None:
    tree = plant(tmp_path)
    raw = _plant_raw(tree.fs_root)
    before = sorted(os.listdir(raw))
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        for op, args in ATTEMPTS:
            _refused(runner, op, args)
            assert runner.call("main", "fs.read", {"path": "ok.txt"}) == NEIGHBOUR
        # Nothing was made or changed, and the rest of the tree still lists and reads.
        assert sorted(os.listdir(raw)) == before
        assert Path(os.fsdecode(raw + b"/" + RAW_FILE)).read_bytes() == b"raw"
        assert [e["name"] for e in runner.call("main", "fs.list", {"path": "dir"})] == \
            ["f.txt", "sub"]
        count, problems = kernel.verify_audit()
        assert count > len(ATTEMPTS) and problems == []


async def test_a_listing_leaves_out_names_that_are_not_utf8_and_its_record_counts_them(
        tmp_path: Path) -> None:
    tree = plant(tmp_path)
    _plant_raw(tree.fs_root)
    fs = RacyFs(tree.fs_root)
    async with Kernel.open(tmp_path / "libos.db", fs=fs) as kernel:
        runner = await Runner.start(kernel, tree, fs)
        before = kernel.store.head_seq
        listed = runner.call("main", "fs.list", {"path": "raw"})
        assert [(e["name"], e["type"]) for e in listed] == [
            (name.decode(), "link") for name in sorted(LINKS)]
        outcome = [r.record for r in kernel.store.audit_records(after=before)
                   if r.record.phase == "intent+outcome"]
        assert [(r.syscall, r.detail["ok"], r.detail["unnamed"]) for r in outcome] == [
            ("fs.list", True, 2)]  # the file and the directory whose names are not text
        before = kernel.store.head_seq
        assert [e["name"] for e in runner.call("main", "fs.list", {"path": "dir"})] == \
            ["f.txt", "sub"]
        assert all("unnamed" not in r.record.detail
                   for r in kernel.store.audit_records(after=before))


TS_TOOL = """
export default async function run(args: any, libos: any) {
  try {
    return args.op === "list" ? await libos.fs.list(args.path) : await libos.fs.read(args.path);
  } catch (e: any) {
    return {code: e.code, message: String(e.message)};
  }
}"""


async def test_a_typescript_tool_meets_such_a_name_as_a_typed_error_with_its_record(
        tmp_path: Path) -> None:
    from broker import AgentImage
    from sandboxes.deno import DenoSandbox
    from tests.conftest import ALL_BUILTINS
    from tests.sandboxes.conftest import LIMITS, NEEDS

    root = tmp_path / "libos-fs"
    (root / "work/pub").mkdir(parents=True)
    (root / "work/pub/ok.txt").write_text(NEIGHBOUR)
    _plant_raw(root)
    async with DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb) as sandbox, Kernel.open(
            tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS) as kernel:
        await kernel.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = kernel.spawn("agent", caps=["fs:/work/pub/**:read", "tool:*:register,call"])
        await kernel.call_tool(pid, "register_tool", {"name": "t", "lang": "ts",
                                                      "source": TS_TOOL})
        listed = await kernel.call_tool(pid, "t", {"op": "list", "path": "/work/pub/raw"})
        assert sorted(e["name"] for e in listed) == sorted(n.decode() for n in LINKS)
        for op, path in (("read", "/work/pub/raw/to_file"), ("list", "/work/pub/raw/to_dir")):
            before = kernel.store.head_seq
            got = await kernel.call_tool(pid, "t", {"op": op, "path": path})
            assert got["code"] == "INVALID_ARGUMENT" and "UTF-8" in got["message"], got
            records = [r for r in kernel.audit(pid) if r["seq"] > before
                       and r["syscall"] == f"fs.{op}"]
            assert [(r["phase"], r["tool"], r["detail"]["error"]) for r in records
                    if r["phase"] != "intent"] in (
                [("intent+outcome", "t", "INVALID_ARGUMENT")],
                [("rejected", "t", "INVALID_ARGUMENT")],
                [("denied", "t", "INVALID_ARGUMENT")]), records
            assert await kernel.call_tool(pid, "t", {"op": "read", "path": "/work/pub/ok.txt"}) \
                == NEIGHBOUR
        count, problems = kernel.verify_audit()
        assert problems == [] and count > 0
