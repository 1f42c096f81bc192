"""The requests the audit chain records closed unanswered: cancelled (its call gone, an
`admin` record) or expired (no answer by its deadline, a `denied` record). Such a request is
settled whatever its row says later: a database writer who sets it back to pending (a later
deadline) or answered gets no answer to it signed by a front end, nor applied by a broker.

Read from the chain, never from the row, and only forward: each look reads the records
appended since the last (through their own indexes: `audit_admin`, `audit_expired`).
"""

from __future__ import annotations

from typing import Any

from broker.store import Store

CLOSED_STATES = ("cancelled", "expired")


class ClosedOnChain:
    """`whole`: a front end's reader reads every record (its store's head was found at its
    opening and never moves); a broker (`False`) reads no further than the chain it links to
    (`Store.linked_seq`: a row past it is read again at the next look)."""

    def __init__(self, *, whole: bool = False) -> None:
        self.whole = whole
        self._read = {state: 0 for state in CLOSED_STATES}  # seq read up to, by state
        self._closed: dict[str, str] = {}  # request id -> the state the chain records
        self._end: tuple[int, str | None] = (0, None)  # (whole) the last record at the last look

    def state_of(self, store: Store, approval_id: str) -> str | None:
        """`cancelled` or `expired` if the chain records the request so, else None."""
        self.catch_up(store)
        return self._closed.get(approval_id)

    def catch_up(self, store: Store) -> None:
        linked = self._whole_end(store) if self.whole else store.linked_seq
        reads = {"cancelled": store.cancel_records, "expired": store.expiry_records}
        for state, records in reads.items():
            for seq, detail in records(self._read[state], whole=self.whole):
                self._read[state] = max(self._read[state],
                                        seq if linked is None else min(seq, linked))
                if (isinstance(detail, dict) and detail.get("state") == state
                        and isinstance(request := detail.get("request"), str)):
                    self._closed.setdefault(request, state)

    def _whole_end(self, store: Store) -> int:
        """A front end's reader: the end of the chain's run of records with no gap, read up
        to (a record past a gap is read, and again at the next look: a writer's kept far
        past the end moved the marks past every record the broker appended next, red team
        35). If the one its last look read up to is gone or another (a writer put a record
        at the next seq, let the page look and deleted it: the marks left there hid every
        record since, red team 31), it reads again from the start."""
        if store.hash_at(self._end[0]) != self._end[1]:
            self._read = dict.fromkeys(CLOSED_STATES, 0)
            self._end = (0, None)
        last = store.run_end(self._end[0])
        self._end = (last, store.hash_at(last))
        return last

    def open_rows(self, store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` as the chain says: a row pending that the chain records closed is shown in
        the state recorded (a listing of pending requests leaves it out)."""
        self.catch_up(store)
        return [{**row, "state": self._closed[row["id"]]}
                if row["state"] == "pending" and row["id"] in self._closed else row
                for row in rows]
