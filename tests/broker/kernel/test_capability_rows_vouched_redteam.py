"""A process's stored capability rows are vouched for by the chain (invariant 15). Every path
that creates rows (a host spawn, a host fork, a child's `proc.spawn`, an approval given
`--always`, an exec) has its record carry the digest of each row. Then a row is edited
(widened) or planted behind the chain's back: `libos audit --verify` exits 1 naming it, and
a kernel opening the store leaves it out, with a record of why: the widened read fails
`NotCapable`, and the untouched neighbour capability still reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotCapable
from broker.caps import Capability
from broker.cli import main as cli_main
from broker.store.capvouch import CAP_DIGESTS, cap_digest
from broker.store.opening import open_store
from tests.conftest import ALL_BUILTINS, approve_a_call, open_image

NEEDS = ("fs:/**:read,write", "obj:*:read,write", "proc:*:spawn,exec", "human:*:ask")
PUB, OTHER = "fs:/data/pub/**:read", "fs:/data/other/**:read"
ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}


class Made:
    """The processes made by each path, over one store."""

    def __init__(self, store: Path | str, fs_root: Path) -> None:
        self.store, self.fs_root = store, fs_root
        self.pids: dict[str, int] = {}


def fs_cap(kernel: Kernel, pid: int, scope: str) -> str:
    return next(c["id"] for c in kernel.capabilities(pid) if c["scope"] == scope)


async def _approved_always(kernel: Kernel) -> int:
    pid = kernel.spawn("agent", caps=[PUB, ASK_WRITE])
    await approve_a_call(kernel, pid, "write_file", {"path": "/out/a.txt", "data": "x"},
                         always=True)
    return pid


@pytest.fixture
async def made(store_at: Path | str, tmp_path: Path) -> Made:
    made = Made(store_at, tmp_path / "libos-fs")
    for where in ("pub", "other", "secret", "out"):
        (made.fs_root / "data" / where).mkdir(parents=True)
        (made.fs_root / "data" / where / "f").write_text(where)
    (made.fs_root / "out").mkdir()
    async with Kernel.open(store_at, fs_root=made.fs_root) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "exec"))
        await open_image(kernel, "narrow", needs=(PUB,))
        host = made.pids["host.spawn"] = kernel.spawn(
            "agent", caps=[PUB, OTHER, "proc:*:spawn,exec"])
        made.pids["proc.spawn"] = await kernel.call_tool(
            host, "spawn", {"image": "agent", "caps": [PUB, OTHER]})
        made.pids["host.fork"] = kernel.fork(made.pids["proc.spawn"])
        made.pids["approval.answer"] = await _approved_always(kernel)
        execer = made.pids["proc.exec"] = kernel.spawn(
            "agent", caps=["fs:/data/**:read", "proc:narrow:exec"])
        await kernel.call_tool(execer, "exec", {"image": "narrow"})
        assert kernel.verify_audit()[1] == []
    return made


def vouching(store: Path | str) -> dict[str, str]:
    """Each stored capability row (by id) with the syscall of the record that vouches for it."""
    s = open_store(store)
    try:
        by_digest = {d: r.record.syscall for r in s.audit_records()
                     for d in r.record.detail.get(CAP_DIGESTS, [])}
        return {cap.id: by_digest.get(cap_digest(handle, cap), "nothing")
                for handle, cap in s.stored_capabilities()}
    finally:
        s.close()


def _rows_of(store: Path | str, pid: int) -> list[tuple[str, Capability]]:
    s = open_store(store)
    try:
        return s.stored_capabilities(owner=pid)
    finally:
        s.close()


@pytest.mark.parametrize("path", ["host.spawn", "proc.spawn", "host.fork", "approval.answer",
                                  "proc.exec"])
async def test_every_path_that_grants_vouches_for_each_row(made: Made, path: str) -> None:
    rows = _rows_of(made.store, made.pids[path])
    by = vouching(made.store)
    if path == "approval.answer":  # the standing grant the answer made
        [granted] = [c for _, c in rows if c.scope == "/out/a.txt"]
        assert by[granted.id] == path
    elif path == "proc.exec":  # the narrowed capability the exec added
        [added] = [c for _, c in rows if c.scope == "/data/pub/**"]
        assert by[added.id] == "caps.narrow"
    else:
        assert {by[c.id] for _, c in rows} == {path}


def edit(store: Path | str, sql: str, values: tuple[Any, ...]) -> None:
    s = open_store(store)
    try:
        with s.transaction() as db:
            db.execute(sql, values)
    finally:
        s.close()


def widen(made: Made, pid: int, cap_id: str) -> None:
    edit(made.store, "UPDATE capabilities SET scope='/**', rights='read,write' WHERE id=?",
         (cap_id,))


def plant(made: Made, pid: int, cap_id: str) -> None:
    edit(made.store, "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect,"
         " created) VALUES (?,?,?,?,?,?,?,?)",
         ("cap_planted", pid, "h_planted", "fs", "/**", "read,write", "allow", 0.0))


ATTACKS: dict[str, Callable[[Made, int, str], None]] = {"widened": widen, "planted": plant}


@pytest.mark.parametrize("path", ["host.spawn", "proc.spawn", "host.fork"])
@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_row_no_record_vouches_for_is_named_and_left_out(
        made: Made, path: str, attack: str, capsys: pytest.CaptureFixture[str]) -> None:
    pid = made.pids[path]
    [edited] = [c.id for _, c in _rows_of(made.store, pid) if c.scope == "/data/pub/**"]
    ATTACKS[attack](made, pid, edited)
    named = "cap_planted" if attack == "planted" else edited
    reported = f"process {pid}'s capability {named} (fs:/**:read,write, allow)"
    assert cli_main(["audit", "--verify", "--json", "--db", str(made.store)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p for p in problems if p.startswith(reported)], problems
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
        assert named not in {c["id"] for c in kernel.capabilities(pid)}
        # The neighbour capability, untouched, still reads.
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"}) == "other"
        if attack == "planted":  # its own row is untouched: it reads as granted
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        # The broker that opened the store says what it left out, in the chain.
        found = [r for r in kernel.audit() if r["syscall"] == "audit.anchor"]
        assert any(r["detail"]["problem"].startswith(reported) for r in found)
        assert any(p.startswith(reported) for p in kernel.verify_audit()[1])


@pytest.mark.parametrize("path", ["approval.answer", "proc.exec"])
async def test_a_widened_grant_of_an_answer_or_an_exec_is_named_and_left_out(
        made: Made, path: str) -> None:
    pid = made.pids[path]
    scope = "/out/a.txt" if path == "approval.answer" else "/data/pub/**"
    [edited] = [c.id for _, c in _rows_of(made.store, pid) if c.scope == scope]
    widen(made, pid, edited)
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        assert any(p.startswith(f"process {pid}'s capability {edited}")
                   for p in kernel.verify_audit()[1])
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})


async def test_untouched_rows_verify_and_load_as_granted(made: Made) -> None:
    assert cli_main(["audit", "--verify", "--db", str(made.store)]) == 0
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        for pid in made.pids.values():
            assert kernel.capabilities(pid)
        pid = made.pids["host.spawn"]
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
        assert not [r for r in kernel.audit() if r["syscall"] == "audit.anchor"]


async def test_rows_of_a_process_made_before_records_carried_digests_are_not_failed(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A process whose creating record carries no digests (an older broker's): its rows
    cannot be checked; they load as stored, and verify does not fail them."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "exec"))
    pid = _process_with_no_record(db_path, "/data/pub/**")
    store = open_store(db_path)
    try:
        assert [c.scope for _, c in store.load_capabilities(owner=pid)] == ["/data/pub/**"]
    finally:
        store.close()
    capsys.readouterr()
    assert cli_main(["audit", "--verify", "--json", "--db", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out)["unchecked_capabilities"] == 1
    assert cli_main(["audit", "--verify", "--db", str(db_path)]) == 0
    assert "1 capability rows not checked" in capsys.readouterr().out


async def test_an_older_brokers_processes_keep_their_rows_after_digests_begin(
        db_path: Path) -> None:
    """The first host spawn of a broker whose records carry digests names the processes made
    before (`cap_older`): they keep their rows after; one planted after it gets nothing."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "exec"))
    old = _process_with_no_record(db_path, "/data/pub/**")
    async with Kernel.open(db_path) as kernel:
        new = kernel.spawn("agent", caps=[PUB])
        [first] = [r for r in kernel.audit() if r["syscall"] == "host.spawn"]
        assert first["detail"]["cap_older"] == [old]
        kernel.spawn("agent", caps=[PUB])  # (named once: the first only)
        assert [r["detail"].get("cap_older") for r in kernel.audit()
                if r["syscall"] == "host.spawn"] == [[old], None]
    planted = _process_with_no_record(db_path, "/**")
    async with Kernel.open(db_path) as kernel:
        assert [c["scope"] for c in kernel.capabilities(old)] == ["/data/pub/**"]
        assert "/data/pub/**" in [c["scope"] for c in kernel.capabilities(new)]
        assert kernel.capabilities(planted) == []
        assert any(f"created process {planted}: planted" in p
                   for p in kernel.verify_audit()[1])


def _process_with_no_record(db_path: Path, scope: str) -> int:
    """A process and its read of `scope` stored as an older broker did (or one planting
    them): no record made either."""
    store = open_store(db_path)
    try:
        pid = store.insert_process(parent=None, image="agent", version="1", state="runnable",
                                   root="/", cwd="/")
        store.insert_capabilities([(f"h_{pid}", Capability(
            kind="fs", scope=scope, rights=frozenset({"read"}), owner=pid))])
        return pid
    finally:
        store.close()
