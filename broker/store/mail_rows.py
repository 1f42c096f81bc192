"""Mailboxes and raised events in the store: a message is stored before `proc.send` returns,
taken by the receive that marks it (its intent's seq), put back if that receive's outcome a
crash cut off, or set aside (migration 13) if a tool's receive could not be sent it (kept, and
a tool's next receive goes on past it); an event is seen once per process, likewise.

A mixin of `SQLiteStore` (see `broker.store.connection`): every method is one committed
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.json_text import encoder
from broker.store.connection import Connected
from broker.store.data_labels import EVENT, MAILBOX, DataKey
from broker.store.json_column import read_json
from broker.store.labels import dump_labels, load_labels

_json = encoder(default=repr)
# The longest event name a notice carries (a notice's payload is bounded by the server).
NOTICE_NAME = 256


class MailRows(Connected):
    # -- mailboxes -------------------------------------------------------------------------------

    def put_message(self, to_pid: int, from_pid: int | None, body: Any,
                    labels: Iterable[str] = ()) -> int:
        """`labels`: the sender's, which the receiver takes on with the message."""
        with self.transaction() as db:
            self._notify(db, f"mail:{to_pid}")  # a receive waiting on another broker wakes
            return int(db.execute("INSERT INTO mailbox(to_pid, from_pid, body, created, labels)"
                                  " VALUES (?,?,?,?,?) RETURNING id",
                                  (to_pid, from_pid, _json(body), self._now(),
                                   dump_labels(labels))).fetchone()[0])

    def take_message(self, to_pid: int, taken_by: int, *, past_aside: bool = False
                     ) -> dict[str, Any] | None:
        """Take the oldest message, marked with the intent that took it (so a receive whose
        outcome a crash made unknown can put it back); `past_aside`: not one set aside (a
        tool's receive: `set_aside_messages`)."""
        # (The chain's floor first: a shared store's walk may fail, never after the take.)
        vouched = self.vouched_labels((MAILBOX, str(to_pid)))  # type: ignore[attr-defined]
        with self.transaction() as db:
            row = db.execute("SELECT id, from_pid, body, created, labels, to_pid FROM mailbox"
                             " WHERE to_pid=?"
                             " AND taken IS NULL" + (" AND aside IS NULL" if past_aside else "")
                             + " ORDER BY id LIMIT 1", (to_pid,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE mailbox SET taken=? WHERE id=?", (taken_by, row[0]))
        return self._message(row, vouched)

    def message_taken_by(self, intent: int) -> dict[str, Any] | None:
        """The message a receive took, as it returned it."""
        rows = self._query("SELECT id, from_pid, body, created, labels, to_pid FROM mailbox"
                           " WHERE taken=?", (intent,))
        return self._message(tuple(rows[0])) if rows else None

    def _message(self, row: Any, vouched: frozenset[str] | None = None) -> dict[str, Any]:
        """A message as a receive returns it; `labels` (its sender's, joined with what the
        chain shows was sent to its mailbox: `data_labels`) only when it has any: the receive
        takes them off and on (`proc.receive`)."""
        out = {"id": row[0], "from": row[1], "body": read_json(row[2], f"message {row[0]}", None),
               "sent": row[3]}
        return self._with_labels(out, row[4], (MAILBOX, str(row[5])), vouched)

    def _with_labels(self, out: dict[str, Any], stored: Any, key: DataKey,
                     vouched: frozenset[str] | None = None) -> dict[str, Any]:
        if vouched is None:
            vouched = self.vouched_labels(key)  # type: ignore[attr-defined]
        labels = load_labels(stored) | vouched
        if labels:
            out["labels"] = sorted(labels)
        return out

    def untake_messages(self, intents: list[int]) -> int:
        with self.transaction() as db:
            return sum(db.execute("UPDATE mailbox SET taken=NULL WHERE taken=?",
                                  (i,)).rowcount for i in intents)

    def set_aside_messages(self, intent: int) -> list[int]:
        """What the receive of `intent` took and could not send goes back, set aside by it:
        kept, where it was in line, for the planner's receive and the host to see; a tool's
        receive goes on past it. Returns the ids."""
        with self.transaction() as db:
            return [int(row[0]) for row in db.execute(
                "UPDATE mailbox SET taken=NULL, aside=? WHERE taken=? RETURNING id",
                (intent, intent)).fetchall()]

    def messages_set_aside(self, pid: int) -> list[dict[str, Any]]:
        """The messages of `pid`'s mailbox a tool's receive set aside and no receive has taken
        since, oldest first, each with `set_aside_by` (the audit seq of that receive)."""
        rows = self._query("SELECT id, from_pid, body, created, labels, to_pid, aside FROM"
                           " mailbox WHERE to_pid=? AND taken IS NULL AND aside IS NOT NULL"
                           " ORDER BY id", (pid,))
        return [{**self._message(tuple(row)), "set_aside_by": row[6]} for row in rows]

    def mailbox_size(self, pid: int) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM mailbox WHERE to_pid=? AND taken IS"
                               " NULL", (pid,))[0]["n"])

    # -- raised events ---------------------------------------------------------------------------

    def raise_event(self, name: str, data: Any, source: int | None,
                    labels: Iterable[str] = ()) -> int:
        with self.transaction() as db:
            # Waits on other brokers wake (a name past a notice's room wakes every wait).
            self._notify(db, f"event:{name}" if len(name) <= NOTICE_NAME else "event")
            return int(db.execute("INSERT INTO raised(name, data, source, created, labels)"
                                  " VALUES (?,?,?,?,?) RETURNING id",
                                  (name, _json(data), source, self._now(),
                                   dump_labels(labels))).fetchone()[0])

    def take_event(self, pid: int, name: str, taken_by: int | None = None, *,
                   past_aside: bool = False) -> dict[str, Any] | None:
        """The oldest event of that name this process has not seen yet, marked seen by the
        intent that took it (so a wait whose outcome a crash cut off can put it back); one
        set aside for it (`set_aside_events`) counts as unseen unless `past_aside` (a tool's
        wait goes on past it)."""
        vouched = self.vouched_labels((EVENT, f"event:{name}"))  # type: ignore[attr-defined]
        aside = "" if past_aside else " AND s.aside IS NULL"
        with self.transaction() as db:
            # Through the name's index, each candidate looked up in what this process saw
            # (not a list of everything it ever saw, nor every event of every name).
            row = db.execute(
                "SELECT id, data, source, created, name, labels FROM raised r WHERE name=? AND NOT"
                f" EXISTS (SELECT 1 FROM raised_seen s WHERE s.pid=? AND s.event=r.id{aside})"
                " ORDER BY id LIMIT 1", (name, pid)).fetchone()
            if row is None:
                return None
            db.execute("INSERT INTO raised_seen(pid, event, taken) VALUES (?,?,?) ON CONFLICT"
                       " (pid, event) DO UPDATE SET taken=excluded.taken, aside=NULL",
                       (pid, row[0], taken_by))
        return self._event(row, vouched)

    def set_aside_events(self, intent: int) -> list[int]:
        """The event the wait of `intent` saw and could not send is set aside for its process:
        a tool's wait goes on past it; the planner's wait, and the host, still see it."""
        with self.transaction() as db:
            return [int(row[0]) for row in db.execute(
                "UPDATE raised_seen SET taken=NULL, aside=? WHERE taken=? RETURNING event",
                (intent, intent)).fetchall()]

    def events_set_aside(self, pid: int) -> list[dict[str, Any]]:
        """The events a tool's wait of `pid` set aside and no wait has taken since, oldest
        first, each with `set_aside_by` (the audit seq of that wait)."""
        rows = self._query("SELECT r.id, r.data, r.source, r.created, r.name, r.labels, s.aside"
                           " FROM raised r JOIN raised_seen s ON s.event=r.id WHERE s.pid=?"
                           " AND s.aside IS NOT NULL ORDER BY r.id", (pid,))
        return [{**self._event(tuple(row)), "set_aside_by": row[6]} for row in rows]

    def _event(self, row: Any, vouched: frozenset[str] | None = None) -> dict[str, Any]:
        out = {"id": row[0], "name": row[4], "data": read_json(row[1], f"event {row[0]}", None),
               "source": row[2], "raised": row[3]}
        # Its raiser's labels (and what the chain shows was raised by its name): the wait
        # takes them off and on (`proc.wait_event`).
        return self._with_labels(out, row[5], (EVENT, f"event:{row[4]}"), vouched)

    def unsee_events(self, intents: list[int]) -> int:
        """Events seen by these (cut-off) waits are unseen again: back in the queue."""
        with self.transaction() as db:
            return sum(db.execute("DELETE FROM raised_seen WHERE taken=?", (i,)).rowcount
                       for i in intents)

    def event_seen_by(self, intent: int) -> dict[str, Any] | None:
        """The event a wait took, as it returned it."""
        rows = self._query("SELECT r.id, r.data, r.source, r.created, r.name, r.labels FROM"
                           " raised r"
                           " JOIN raised_seen s ON s.event=r.id WHERE s.taken=?", (intent,))
        return self._event(tuple(rows[0])) if rows else None
