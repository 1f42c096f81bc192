"""Tool sources (content addressed) and the tools processes registered, each checked
against what the audit chain vouches for (see `broker.store.vouch`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from broker.errors import NotFound
from broker.store import vouch
from broker.store.chain import AuditChain
from broker.store.connection import Connected, Db, dump_json, where


class ToolTables(AuditChain):
    # -- tools -------------------------------------------------------------------------------

    def put_tool_source(self, hash_: str, lang: str, source: bytes, *, defer: bool = False
                        ) -> None:
        """`defer`: with the next transaction (`Connected.defer`): a registration's rows are
        committed with its outcome, one commit."""
        def write(db: Db) -> None:
            db.execute("INSERT INTO tool_sources(hash, lang, source) VALUES (?,?,?)"
                       " ON CONFLICT DO NOTHING", (hash_, lang, source))
        self._write(write, defer)

    def get_tool_source(self, hash_: str) -> tuple[str, bytes]:
        """A stored tool source, checked against its hash (`Tampered` if edited)."""
        rows = self._query("SELECT lang, source FROM tool_sources WHERE hash=?", (hash_,))
        if not rows:
            raise NotFound(f"no tool source {hash_}")
        return rows[0]["lang"], vouch.check_source(hash_, bytes(rows[0]["source"]))

    def put_process_tool(self, pid: int, name: str, spec: dict[str, Any], *,
                         defer: bool = False) -> ToolRow | None:
        """`defer`: as `put_tool_source`'s; the deferred row is returned, which the
        registration withdraws if the commit meant to carry it fails (`ToolRow`)."""
        row = ToolRow(self, pid, name, dump_json(spec))  # now: the spec may change after
        if not defer:
            with self.transaction() as db:
                row(db)
            return None
        self.defer(row)
        return row

    def _write(self, write: Callable[[Db], Any], defer: bool) -> None:
        if defer:
            self.defer(write)
            return
        with self.transaction() as db:
            write(db)

    def tool_source_hashes(self) -> list[str]:
        return [r["hash"] for r in self._query("SELECT hash FROM tool_sources ORDER BY hash")]

    def stored_tool_source(self, hash_: str) -> bytes | None:
        """A tool source as stored, unchecked: for verification."""
        rows = self._query("SELECT source FROM tool_sources WHERE hash=?", (hash_,))
        return bytes(rows[0]["source"]) if rows else None

    def stored_registrations(self, pid: int | None = None
                             ) -> list[tuple[int, str, dict[str, Any]]]:
        """The `process_tools` rows as stored (pid, name, spec), unchecked: for verification.
        A spec that is not a JSON object reads as {} (it names no code)."""
        out = []
        only, values = where({"pid": pid})
        for r in self._query(f"SELECT pid, name, spec FROM process_tools WHERE TRUE{only}"
                             " ORDER BY pid, name", values):
            try:
                spec = json.loads(r["spec"])
            except (ValueError, TypeError, RecursionError):  # (nested past the parser too)
                spec = None
            out.append((r["pid"], r["name"], spec if isinstance(spec, dict) else {}))
        return out

    def process_tools(self, pid: int) -> dict[str, dict[str, Any]]:
        """A process's registered tools, each checked against the registration the chain
        records. A registration a crash cut off (its outcome unknown) is left out: the chain
        cannot say what it named. One the chain does not vouch for is kept with `refused`
        set to the problem, so that calling it fails as `Tampered`."""
        rows = self.stored_registrations(pid)
        if not rows:
            return {}
        registered = vouch.Registrations()
        for stored in self.audit_records(pid=pid):
            registered.see(stored)
        tools: dict[str, dict[str, Any]] = {}
        for _, name, spec in rows:
            if registered.is_unsettled(pid, name):
                continue
            problem = registered.tool_problem(pid, name, spec)
            tools[name] = spec if problem is None else vouch.refused_tool(spec, problem)
        return tools



class ToolRow:
    """A tool's `process_tools` row, deferred to the commit of its registration's outcome.
    If that commit fails (the caller told so), the registration is taken back: `withdraw`
    while the row still waits, and the transaction that later carries it writes nothing of
    it (it would otherwise wait for the next commit, and the tool come back after its caller
    heard it was not registered)."""

    __slots__ = ("committed", "name", "pid", "store", "text", "withdrawn")

    def __init__(self, store: Connected, pid: int, name: str, text: str) -> None:
        self.store, self.pid, self.name, self.text = store, pid, name, text
        self.committed = self.withdrawn = False

    def __call__(self, db: Db) -> None:
        if not self.withdrawn:
            db.execute("INSERT INTO process_tools(pid, name, spec) VALUES (?,?,?) ON CONFLICT"
                       " (pid, name) DO UPDATE SET spec=excluded.spec",
                       (self.pid, self.name, self.text))

    def after_commit(self) -> None:
        self.committed = True

    def withdraw(self) -> bool:
        """Not to be written after all. False if it has committed already (durable), or may
        have: a commit that carried it lost its answer, which nobody can tell yet (it stays,
        its outcome unknown, as the store will say either way: it was written, or it waits
        still and will be)."""
        with self.store._lock:  # (no commit runs meanwhile, on any thread)
            if not self.committed and not self.store._commit_in_doubt():
                self.withdrawn = True
            return self.withdrawn
