"""A read-only store opened (and closed) in the writer's own process, while it writes, loses
none of the writer's commits. Opening a store first looks at the file (`broker.store.probe`);
it used to read the header with a plain open and close of the database file, and closing any
descriptor of a file drops every POSIX lock the process holds on it: the writer's SQLite
connections (its own and its WAL checkpointer's) lost their shared lock on the database
unknown to SQLite. The next connection of another process to close (a `libos ps`) then took
the exclusive lock as if it were the last, checkpointed and deleted the WAL under the writer:
every later commit went to the deleted file, and the writer's `kill -9` lost them all,
acknowledged (invariant 7)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

WRITER = """
import sys
from broker.store.audit import AuditRecord
from broker.store.sqlite import SQLiteStore
db, key = sys.argv[1], sys.argv[2]
store = SQLiteStore(db, audit_key=key)
def append(n):
    for _ in range(n):
        store.append_audit(AuditRecord(phase="admin", syscall="audit.anchor"))
append(5)
reader = SQLiteStore(db, writer=False)  # a page, a report: in the broker's own process
print("READER", len(list(reader.audit_records())), flush=True)
reader.close()
print("READY", flush=True)
sys.stdin.readline()  # meanwhile another process's connection comes and goes
append(5)
print("ACKED", list(store.audit_records())[-1].seq, flush=True)
sys.stdin.readline()  # killed here
"""


def test_a_reader_in_the_writers_process_loses_none_of_its_commits(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(tmp_path / "k")], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.stdin is not None and writer.stdout is not None
    try:
        read = writer.stdout.readline().split()
        assert read[0] == "READER" and int(read[1]) >= 5  # the neighbour: the reader reads
        assert writer.stdout.readline() == "READY\n"
        cli = sqlite3.connect(db)  # what `libos ps` does, in a process of its own
        assert cli.execute("SELECT COUNT(*) FROM audit").fetchone()[0] >= 5
        cli.close()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        acked = writer.stdout.readline().split()
        assert acked[0] == "ACKED"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    after = sqlite3.connect(db)
    try:
        last = after.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    finally:
        after.close()
    assert last == int(acked[1])
