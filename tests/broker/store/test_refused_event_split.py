"""Red team (session 16): a process's deferred end (`Store.end_later`) carries the events
batched before it, of every process (tool log lines). One of them that the store refuses for
good used to fail the whole end: the process that ended was told the refusal (and ended with
it, exit 1), the offender was never told, and every other event of the batch was lost. Now
the refused write is split an event at a time: only the offender's event is set aside (its
process told, `refusals_of`), the end and the other events are stored and reported to the
caller with their seqs. The same holds for a batch written at once (`append_events`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.store.opening import open_store
from broker.store.refusals import WriteRefused

# An event no store takes: text that is not Unicode in its kind (a stand-in for any value
# that gets past the checks before it; the event's data is escaped, `dump_storable_json`).
BAD_KIND = "log\ud800"


def _process(store: Any) -> int:
    return store.insert_process(parent=None, image="i", version="1", state="running",
                                root="/", cwd="/")


def test_a_refused_event_in_an_end_is_its_own_process_s(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        ender, offender, bystander = _process(store), _process(store), _process(store)
        events = [(bystander, "log", {"text": "first"}), (offender, BAD_KIND, {"text": "x"}),
                  (ender, "log", {"text": "own"}), (None, "note", {"text": "kernel's"}),
                  (ender, "state", {"new": "exited"})]
        landings: list[tuple[bool | None, list[int | None]]] = []
        store.end_later(ender, {"state": "exited", "exit_code": 0}, events,
                        lambda ended, seqs: landings.append((ended, list(seqs))))
        store.commit_deferred()
        assert not store.deferred
        refusal = store.refusals_of(offender)
        assert isinstance(refusal, WriteRefused) and refusal.code == "INVALID_ARGUMENT"
        assert store.refusals_of(ender) is None and store.refusals_of(bystander) is None
        row = store.get_process(ender)
        assert row["state"] == "exited" and row["exit_code"] == 0
        assert len(landings) == 1
        ended, seqs = landings[0]
        assert ended and len(seqs) == len(events) and seqs[1] is None
        stored = {e["seq"]: (e["pid"], e["kind"], e["data"]) for e in store.events()}
        kept = [seq for seq in seqs if seq is not None]
        assert kept == sorted(kept)  # (in the order they were emitted)
        assert [stored[seq] for seq in kept] == [e for e in events if e[1] != BAD_KIND]
        assert store.events(pid=offender) == []
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()


def test_an_end_whose_own_event_is_refused_keeps_the_others(store_at: str | Path) -> None:
    """The end's own write refused (its process is the offender): nothing of the end is
    written, its process is told; the events batched before it are stored all the same."""
    store = open_store(store_at)
    try:
        ender, bystander = _process(store), _process(store)
        events = [(bystander, "log", {"text": "kept"}), (ender, BAD_KIND, {"new": "exited"})]
        landings: list[tuple[bool | None, list[int | None]]] = []
        store.end_later(ender, {"state": "exited", "exit_code": 0}, events,
                        lambda ended, seqs: landings.append((ended, list(seqs))))
        store.commit_deferred()
        assert isinstance(store.refusals_of(ender), WriteRefused)
        assert store.refusals_of(bystander) is None
        assert store.get_process(ender)["state"] == "running"
        assert [(e["pid"], e["data"]) for e in store.events()] == [(bystander, {"text": "kept"})]
        assert landings == [(None, [store.events()[0]["seq"], None])]  # (None: set aside)
    finally:
        store.close()


def test_a_refused_event_in_a_batch_is_set_aside_alone(store_at: str | Path) -> None:
    """A batch written at once (the event bus's flush): the refused event is set aside, its
    process told; the others are stored, in order, and their seqs returned (None: set aside)."""
    store = open_store(store_at)
    try:
        offender, bystander = _process(store), _process(store)
        rows = [(bystander, "log", {"n": 1}), (offender, BAD_KIND, {"n": 2}),
                (bystander, "log", {"n": 3})]
        seqs = store.append_events(rows)
        assert seqs[1] is None and seqs[0] is not None and seqs[2] is not None
        assert seqs[0] < seqs[2]
        assert [e["data"] for e in store.events()] == [{"n": 1}, {"n": 3}]
        assert isinstance(store.refusals_of(offender), WriteRefused)
        assert store.refusals_of(bystander) is None
        assert store.append_events([(bystander, "log", {"n": 4})])[0] is not None
    finally:
        store.close()


def test_events_written_beside_another_s_refused_write_are_written(
        store_at: str | Path) -> None:
    """PostgreSQL finds a refused deferred write (another process's) only once the events'
    own statements ran (`RefusedBeside`: nothing written): the events are written again,
    never failed for it (their emitter would be told the store failed)."""
    store = open_store(store_at)
    try:
        victim, writer = _process(store), _process(store)
        store.update_process(victim, defer=True, exit_code=2**70)  # refused for good
        seqs = store.append_events([(writer, "log", {"n": 1}), (writer, "log", {"n": 2})])
        assert None not in seqs
        assert [e["data"] for e in store.events(pid=writer)] == [{"n": 1}, {"n": 2}]
        assert isinstance(store.refusals_of(victim), WriteRefused)
        assert store.refusals_of(writer) is None
    finally:
        store.close()


def test_a_lone_refused_event_is_set_aside_too(store_at: str | Path) -> None:
    """Red team rtd: a batch of one line (the periodic flush finds one waiting) refused for
    good used to raise the driver's own error (UnicodeEncodeError, no typed error) out of
    the flush, which is no store fault: it crashed the broker, and the line waited in front
    of every later event. Now it is set aside as one of several is, its process told."""
    store = open_store(store_at)
    try:
        offender = _process(store)
        assert store.append_events([(offender, BAD_KIND, {"n": 1})]) == [None]
        assert isinstance(store.refusals_of(offender), WriteRefused)
        assert store.events() == []
        assert store.append_events([(offender, "log", {"n": 2})])[0] is not None
        assert [e["data"] for e in store.events()] == [{"n": 2}]
    finally:
        store.close()
