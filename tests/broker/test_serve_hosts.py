"""One verifiable history from any host: brokers on two "hosts" (each its own key directory,
`XDG_CONFIG_HOME`, and state directory) serve one PostgreSQL store as real processes; a third
host, holding none of their anchor files, verifies the chain from the anchors they publish in
the database, counting only the keys it trusts itself.

The attacker here can write the database but not any user's key directory: an anchor row
forged under the attacker's key, an anchor row pointed at another head, a tail cut off, and a
tail cut off with the anchors put back are each named (the last only where an anchor file
kept outside the database remains: docs/SCALING.md says why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotFound
from broker.cli import main as cli
from broker.store import signing
from broker.store.audit import AuditRecord, record_hash
from broker.store.keys import KEY_ENV, AuditKey, trust
from tests.broker.store.conftest import raw
from tests.broker.test_serve import Parked, finish, query, worker

REPO = Path(__file__).resolve().parents[2]


class Host:
    """A machine of its own: its user's key directory and state directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.config = root / name / "config"
        self.state = root / name / "state"
        self.key = self.config / "libos" / "audit.key"

    @property
    def public(self) -> Path:
        return self.key.with_name("audit.key.pub")

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(self.config),
                "XDG_STATE_HOME": str(self.state)}

    def enter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """This test's own process acts as this host (for the CLI run in it)."""
        monkeypatch.delenv(KEY_ENV, raising=False)
        for name, value in self.env().items():
            if name != "PATH":
                monkeypatch.setenv(name, value)


def serve(dsn: str, host: Host, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--db", dsn, "--broker", name, "--json",
         "--lease", "2", "--until-idle"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=host.env())


async def seed(dsn: str, host: Host, count: int) -> list[int]:
    """`count` processes, spawned by a broker on `host` that then closes."""
    image = worker({"tool": "now", "args": {}}, {"tool": "sleep", "args": {"seconds": 0.1}},
                   {"tool": "now", "args": {}}, {"tool": "now", "args": {}})
    async with Kernel.open(dsn, broker=f"seed-{host.config.parent.name}",
                           planners=lambda image, pid: Parked(), audit_key=host.key,
                           fs_root=host.state / "seed-fs") as kernel:
        try:
            kernel.image(image.name)
        except NotFound:
            await kernel.register_image(image)
        return [kernel.spawn(image.name, caps=["clock:*:read,sleep"]) for _ in range(count)]


def verdict(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = cli(["audit", "--verify", "--json", *args])
    out = json.loads(capsys.readouterr().out)
    assert code == (0 if out["ok"] else 1)
    return out


def kinds(out: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((f["kind"], f["record"]) for f in out.get("findings", []))


def anchor_seq(dsn: str, key: str) -> int:
    return max(r[0] for r in query(dsn, "SELECT seq FROM anchors WHERE key=?", (key,)))


@pytest.fixture
async def history(pg_database: str, tmp_path: Path) -> dict[str, Any]:
    """Brokers a (on host A) and b (on host B) run processes at once; then b alone runs one
    more, so b's anchor is the one that reaches the chain's end."""
    a, b = Host(tmp_path, "A"), Host(tmp_path, "B")
    for host in (a, b):  # (made by its broker; made here first to read it)
        AuditKey.open(host.key)
    # Brokers sharing a store trust each other's keys: a grant vouches for its rows with
    # the signature of the broker that made it (docs/DESIGN.md, invariant 15).
    trust(a.public, b.key)
    trust(b.public, a.key)
    pids = await seed(pg_database, a, 8)
    brokers = [serve(pg_database, a, "a"), serve(pg_database, b, "b")]
    try:
        outcomes = [finish(proc, 120) for proc in brokers]
    finally:
        for proc in brokers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert sorted(p for out in outcomes for p in out["finished"]) == pids
    # (Each broker published its anchor; which one ran which process is the leases' call.)
    assert {r[0] for r in query(pg_database, "SELECT signer FROM anchors")} >= {"a", "b"}
    pids += await seed(pg_database, a, 1)
    assert finish(serve(pg_database, b, "b"), 120)["finished"] == pids[-1:]
    keys = {name: AuditKey.open(host.key, create=False).public for name, host in
            (("a", a), ("b", b))}
    last = query(pg_database, "SELECT MAX(seq) FROM audit")[0][0]
    assert anchor_seq(pg_database, keys["b"]) == last > anchor_seq(pg_database, keys["a"])
    return {"dsn": pg_database, "a": a, "b": b, "keys": keys, "last": last,
            "c": Host(tmp_path, "C")}


async def test_a_third_host_verifies_every_brokers_records_with_the_keys_it_trusts(
        history: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    dsn, a, b, c, last = (history[k] for k in ("dsn", "a", "b", "c", "last"))
    c.enter(monkeypatch)
    # Host C trusts nobody yet: every anchor in the database is signed by a key it does not
    # trust, so every record is named, never accepted for being signed.
    out = verdict(capsys, "--db", dsn)
    assert not out["ok"] and ("untrusted_tail", 1) in kinds(out)
    assert {k for k, _ in kinds(out)} == {"untrusted_key", "untrusted_tail"}
    # It trusts both hosts' public keys: every record of both brokers is signed.
    for host in (a, b):
        assert cli(["keys", "trust", str(host.public)]) == 0
    out = verdict(capsys, "--db", dsn)
    assert out == {"records": last, "ok": True, "problems": []}
    # Its export carries the newest anchor (b's, from the database): the whole chain, which
    # a party holding b's public key alone verifies.
    c.state.mkdir(parents=True, exist_ok=True)
    exported = c.state / "audit.jsonl"
    assert cli(["audit", "--export", str(exported), "--db", dsn]) == 0
    assert len(exported.read_text().splitlines()) == last + 1
    assert cli(["audit", "--verify", "--from", str(exported), "--public-key",
                str(b.public)]) == 0
    # Trusting only A's key: b's anchor vouches for nothing here, and b's tail (the records
    # past a's newest anchor) is named as signed only under an untrusted key.
    b_fp = signing.fingerprint(history["keys"]["b"])
    assert cli(["keys", "untrust", b_fp]) == 0
    out = verdict(capsys, "--db", dsn)
    a_reach = anchor_seq(dsn, history["keys"]["a"])
    assert kinds(out) == [("untrusted_key", last), ("untrusted_tail", a_reach + 1)]
    [tail] = [p for p in out["problems"] if "records" in p]
    assert tail.startswith(f"record {a_reach + 1}: records {a_reach + 1} to {last} are "
                           f"signed only under keys not trusted here ({b_fp})")
    # ... and given on the command line for this verification, B's key counts again.
    assert verdict(capsys, "--db", dsn, "--trust", str(b.public))["ok"]
    # Trusting only B's key: b's anchor reaches the end, a's anchors are named untrusted.
    assert cli(["keys", "untrust", signing.fingerprint(history["keys"]["a"])]) == 0
    assert cli(["keys", "trust", str(b.public)]) == 0
    out = verdict(capsys, "--db", dsn)
    assert {k for k, _ in kinds(out)} == {"untrusted_key"}
    # ... and a's records that vouch, signed by a key not trusted here, each named, with
    # the rows they granted (docs/DESIGN.md, invariant 15).
    a_key = f"key {signing.fingerprint(history['keys']['a'])}"
    unvouched = [p for p in out["problems"] if "no signature by a key trusted here" in p
                 or "is stored as held" in p]
    assert unvouched and all(a_key in p for p in out["problems"] if p not in unvouched)


def append_forged(dsn: str) -> tuple[int, str]:
    """The attacker appends a well-chained record (no key needed for a hash)."""
    with raw(dsn) as db:
        seq, ts, prev = db.execute("SELECT seq, ts, hash FROM audit ORDER BY seq DESC"
                                   " LIMIT 1").fetchone()
        record = AuditRecord("admin", "caps.revoke", resource="forged")
        digest = record_hash(seq + 1, ts, record, "{}", prev)
        db.execute("INSERT INTO audit(seq, ts, phase, syscall, resource, detail, prev_hash,"
                   " hash) VALUES (?,?,?,?,?,?,?,?)",
                   (seq + 1, ts, "admin", "caps.revoke", "forged", "{}", prev, digest))
    return seq + 1, digest


async def test_an_attacker_with_the_database_cannot_vouch_for_records(
        history: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    dsn, a, b, c, last = (history[k] for k in ("dsn", "a", "b", "c", "last"))
    c.enter(monkeypatch)
    for host in (a, b):
        assert cli(["keys", "trust", str(host.public)]) == 0
    assert verdict(capsys, "--db", dsn)["ok"]
    saved = query(dsn, "SELECT signer, seq, hash, key, signature, at FROM anchors")

    def put_back() -> None:
        with raw(dsn) as db:
            db.execute("DELETE FROM audit WHERE seq > ?", (last,))
            db.execute("DELETE FROM anchors")
            for row in saved:
                db.execute("INSERT INTO anchors(signer, seq, hash, key, signature, at)"
                           " VALUES (?,?,?,?,?,?)", row)
        assert verdict(capsys, "--db", dsn)["ok"]

    a_reach = anchor_seq(dsn, history["keys"]["a"])
    # 1. A record appended, and an anchor row of a broker that never was, signed with the
    #    attacker's own key over the new head (a good signature, by a key nobody trusts).
    seq, digest = append_forged(dsn)
    attacker = AuditKey.open(tmp_path / "attacker" / "audit.key")
    with raw(dsn) as db:
        db.execute("INSERT INTO anchors(signer, seq, hash, key, signature, at)"
                   " VALUES ('evil',?,?,?,?,0)", (seq, digest, attacker.public,
                                                  attacker.sign(signing.anchor_message(
                                                      seq, digest))))
    out = verdict(capsys, "--db", dsn)
    assert kinds(out) == [("untrusted_key", seq), ("untrusted_tail", seq)]
    assert out["problems"][0].startswith(
        f"record {seq}: broker evil's anchor in the store is signed by key "
        f"{signing.fingerprint(attacker.public)}, which is not trusted here")
    # (The record itself vouches, a revocation, and carries no signature: named too.)
    assert out["problems"][-1].startswith(f"record {seq}: it vouches")
    # ... and in place of b's row: b's records keep their trusted anchor only where it was
    #    seen before (host C remembers it; a host that never verified does not).
    with raw(dsn) as db:
        db.execute("DELETE FROM anchors WHERE signer='b'")
        db.execute("UPDATE anchors SET signer='b' WHERE signer='evil'")
    assert kinds(verdict(capsys, "--db", dsn)) == [("untrusted_key", seq),
                                                   ("untrusted_tail", seq)]
    fresh = Host(tmp_path, "fresh")
    fresh.enter(monkeypatch)
    assert kinds(verdict(capsys, "--db", dsn, "--trust", str(a.public), "--trust",
                         str(b.public))) == [("untrusted_key", seq),
                                             ("untrusted_tail", a_reach + 1)]
    c.enter(monkeypatch)
    # ... and under a name that is a terminal escape: named escaped, never as written.
    with raw(dsn) as db:
        db.execute("UPDATE anchors SET signer=? WHERE signer='b'", ("\x1b]52;c;x\x07\u202e",))
    out = verdict(capsys, "--db", dsn)
    assert kinds(out) == [("untrusted_key", seq), ("untrusted_tail", seq)]
    assert "under a name no broker can have ('\\x1b]52;c;x\\x07\\u202e')" in out["problems"][0]
    put_back()
    # 2. b's genuine signature moved onto the new head (the key is trusted, the signature
    #    is not over this head): it does not verify, and the new record is unvouched.
    seq, digest = append_forged(dsn)
    with raw(dsn) as db:
        db.execute("UPDATE anchors SET seq=?, hash=? WHERE signer='b'", (seq, digest))
    assert kinds(verdict(capsys, "--db", dsn)) == [("bad_signature", seq),
                                                   ("unsigned_tail", seq)]
    put_back()
    # 3. The tail cut off, the anchors left: they saw records the chain no longer has.
    with raw(dsn) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
    out = verdict(capsys, "--db", dsn)
    assert ("cut_tail", last) in kinds(out)
    assert any(f"record {last - 2}: missing" in p for p in out["problems"])
    # 4. The tail cut off at a's anchor and b's newer anchor row deleted with it: from the
    #    database alone this is an older genuine state. Host C verified before, and keeps
    #    the newest anchor it verified outside the database: it names the cut. So does b's
    #    host, from b's anchor file; a host that never verified and holds no file cannot.
    with raw(dsn) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (a_reach,))
        db.execute("DELETE FROM anchors WHERE seq > ?", (a_reach,))
    out = verdict(capsys, "--db", dsn)
    assert kinds(out) == [("cut_tail", last)]
    assert out["problems"] == [f"record {a_reach + 1}: missing: the chain ends at record "
                               f"{a_reach}, but the newest anchor verified on this host before"
                               f" saw record {last}: records were removed from the end"]
    b.enter(monkeypatch)
    out = verdict(capsys, "--db", dsn, "--trust", str(a.public))
    assert ("cut_tail", last) in kinds(out)
    Host(tmp_path, "D").enter(monkeypatch)
    assert verdict(capsys, "--db", dsn, "--trust", str(a.public), "--trust",
                   str(b.public))["ok"]  # (the limit README and SCALING state)
