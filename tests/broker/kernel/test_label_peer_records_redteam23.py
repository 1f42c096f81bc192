"""Red team 23 on lane marker's second change (invariant 19, DESIGN §9 "Labels are coarse and
beside the chain"): in a chain brokers share, a file broker `a` narrowed reads its row joined
with the records walked after the narrowing, so a peer's later secret append survives a row
edit. But the walk reads the records past the seq it reached: a database writer (plain SQL, no
key) who deletes the peer's `fs.write` records, or moves them below that seq (negative seqs),
before `a` walks, and drops the row's label, has `a`'s reader take the secret as public
(HIGH: the secret exported; the walk finds a broken link but nothing fails closed for it).

Fixed (the lead's choice): the records gone, nothing names the file they labelled, so once the
walk finds the chain broken every data read carries the label ceiling, every label the store
knows (`broker/store/label_ceiling.py`): the export is refused, and recorded once.

The records cut from the chain's very end instead (nothing after them: no link breaks) are
found by the peer's published anchor, read before each such walk (`broker/store/
peer_anchors.py`, lane peertail); an anchor row a writer adds is skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import Kernel
from broker.store.signing import anchor_message
from tests.broker.kernel.test_label_ceiling import OVER, ceiling_records
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_columns_redteam21 import peer_appends_the_secret, secret_written
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree
from tests.broker.store.conftest import raw

HIDE = {"deleted": "DELETE FROM audit WHERE seq > ? AND syscall='fs.write'",
        "moved below": "UPDATE audit SET seq = -seq WHERE seq > ? AND syscall='fs.write'"}


async def _peer_appends_past_top(pg_database: str, fs: Path) -> int:
    """Broker `b`'s process reads the secret and appends it to /work/f.txt: the chain's last
    seq before that append (the records past it are the append's, and b's after it)."""
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        peer = await _agent(b, SECRET_READ)
        token = await b.call_tool(peer, "read_file", {"path": "/secrets/token.txt"})
        with raw(pg_database) as db:
            [(top,)] = db.execute("SELECT max(seq) FROM audit", ()).fetchall()
        await b.call_tool(peer, "write_file", {"path": "/work/f.txt", "data": token,
                                               "append": True})
    return int(top)


@pytest.mark.parametrize("hide", sorted(HIDE))
async def test_a_peers_secret_append_whose_records_a_writer_hid_keeps_its_label(
        pg_database: str, tmp_path: Path, hide: str) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        top = await _peer_appends_past_top(pg_database, fs)
        with raw(pg_database) as db:  # the writer: the append's records hidden, the row's label
            db.execute(HIDE[hide], (top,))
            db.execute("DELETE FROM file_labels", ())
        reader = await _agent(a, EXPORT)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
        await _refused(a, reader, "x", OVER)
        other = await _agent(a, EXPORT)  # (a public file too: nothing names what was hidden)
        await a.call_tool(other, "read_file", {"path": "/public/readme.txt"})
        await _refused(a, other, "x", OVER)
    assert not (fs / "exports" / "x").exists()
    [detail] = ceiling_records(pg_database)  # (once, however many reads over-label)
    assert detail["ceiling"] == sorted(OVER) and detail["break"] > top


async def test_a_peers_secret_append_left_alone_keeps_its_label(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour: the records left where they are, the row's label dropped still."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _tree(a)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await peer_appends_the_secret(pg_database, fs)
        with raw(pg_database) as db:
            db.execute("DELETE FROM file_labels", ())
        reader = await _agent(a, EXPORT)
        await a.call_tool(reader, "read_file", {"path": "/work/f.txt"})
        await _refused(a, reader, "x")


async def test_an_untouched_shared_chain_over_labels_nothing(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour: brokers sharing an intact chain read a peer's secret append as secret
    (no more), and a public file still exports; no over-labelling is recorded."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _tree(a)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await peer_appends_the_secret(pg_database, fs)
        reader = await _agent(a, EXPORT)
        await a.call_tool(reader, "read_file", {"path": "/work/f.txt"})
        await _refused(a, reader, "x")
        other = await _agent(a, EXPORT)
        hello = await a.call_tool(other, "read_file", {"path": "/public/readme.txt"})
        await a.call_tool(other, "write_file", {"path": "/exports/n", "data": hello})
        assert a.process(other).label == frozenset()
    assert (fs / "exports" / "n").read_text() == "hello"
    assert ceiling_records(pg_database) == []


def _anchor_seq(pg_database: str, signer: str) -> int:
    with raw(pg_database) as db:
        [(seq,)] = db.execute("SELECT seq FROM anchors WHERE signer=?", (signer,)).fetchall()
    return int(seq)


@pytest.mark.parametrize("after", ["short of the anchor", "past the anchor"])
async def test_a_peers_secret_append_cut_from_the_chains_end_keeps_its_label(
        pg_database: str, tmp_path: Path, after: str) -> None:
    """Lane peertail: the writer removes every record past `top` (the peer's append and what
    the peer wrote after it), so this broker's next append links to what is left: no link
    breaks, but the peer's published anchor lies past the chain's end (or, once this broker
    appended past its seq, at a record of another hash). It is read before the walk a
    labelled read makes: the cut is a data break, every data read carries the ceiling."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _tree(a)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        top = await _peer_appends_past_top(pg_database, fs)
        signed = _anchor_seq(pg_database, "b")  # (the peer's close signed its head)
        with raw(pg_database) as db:
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
            db.execute("DELETE FROM file_labels", ())
        reader = await _agent(a, EXPORT)
        while after == "past the anchor" and a.store.last_seq() <= signed:
            await _agent(a)  # (this broker's records take the cut ones' seqs)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
        await _refused(a, reader, "x", OVER)
    assert not (fs / "exports" / "x").exists()
    [detail] = ceiling_records(pg_database)
    assert detail["ceiling"] == sorted(OVER) and detail["break"] == signed


@pytest.mark.parametrize("forged", ["a bad signature", "an untrusted key"])
async def test_a_writers_anchor_row_past_the_chains_end_over_labels_nothing(
        pg_database: str, tmp_path: Path, forged: str) -> None:
    """The neighbour: an anchor row a writer adds past the chain's end (its signature not
    this broker's key's, or by a key not trusted here) is anyone's: it breaks nothing, and a
    public file still exports."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _tree(a)
        with raw(pg_database) as db:
            [(key, signature)] = db.execute(
                "SELECT key, signature FROM anchors WHERE signer='a'", ()).fetchall()
        if forged == "an untrusted key":
            other = Ed25519PrivateKey.generate()
            key = other.public_key().public_bytes_raw().hex()
            signature = other.sign(anchor_message(10**6, "0" * 64)).hex()
        with raw(pg_database) as db:
            db.execute("INSERT INTO anchors(signer, seq, hash, key, signature, at) VALUES"
                       " ('z', ?, ?, ?, ?, 0)", (10**6, "0" * 64, key, signature))
        other_pid = await _agent(a, EXPORT)
        hello = await a.call_tool(other_pid, "read_file", {"path": "/public/readme.txt"})
        await a.call_tool(other_pid, "write_file", {"path": "/exports/n", "data": hello})
        assert a.process(other_pid).label == frozenset()
    assert (fs / "exports" / "n").read_text() == "hello"
    assert ceiling_records(pg_database) == []


async def test_brokers_reading_while_a_peer_appends_and_signs_over_label_nothing(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour, both brokers open at once: the peer appends and signs (every 50 ms)
    while this broker reads, each anchor it is told of checked on the chain; none trips the
    ceiling, and a public file still exports."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a, \
            Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        _tree(a)
        writer, reader = await _agent(b), await _agent(a, EXPORT)
        for n in range(20):
            await b.call_tool(writer, "write_file", {"path": "/work/g.txt", "data": str(n)})
            await a.call_tool(reader, "read_file", {"path": "/work/g.txt"})
            await trio.sleep(0.02)  # (the peer's signing comes round)
        hello = await a.call_tool(reader, "read_file", {"path": "/public/readme.txt"})
        await a.call_tool(reader, "write_file", {"path": "/exports/n", "data": hello})
        assert a.store.chain_links().data_break() is None
    assert (fs / "exports" / "n").read_text() == "hello"
    assert ceiling_records(pg_database) == []
    with raw(pg_database) as db:  # (the peer's anchor moved on while this broker read)
        assert db.execute("SELECT seq FROM anchors WHERE signer='b'", ()).fetchall()[0][0] > 20
