"""A message or an event set aside (migration 13), on both backends: a tool's receive that
could not be sent a message sets it aside (`set_aside_messages`), kept where it was in line;
a receive past those set aside (a tool's) takes the next one, the host sees it with the seq
of the receive that set it aside, a receive of the planner's still takes it, and a crash's
put-back (`untake_messages`) of another intent leaves it set aside. An event likewise, per
process."""

from __future__ import annotations

from pathlib import Path

from broker.store.opening import open_store


def test_a_message_set_aside_is_kept_and_passed_over_by_a_tools_receive(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        pid = store.insert_process(parent=None, image="a", version="1", state="runnable",
                                   root="/", cwd="/")
        big = store.put_message(pid, None, {"big": "x" * 64}, {"untrusted"})
        small = store.put_message(pid, None, {"small": 1})
        # A tool's receive (intent 7) takes the oldest and cannot send it: set aside.
        assert store.take_message(pid, 7, past_aside=True)["id"] == big  # type: ignore[index]
        assert store.set_aside_messages(7) == [big]
        assert store.set_aside_messages(7) == []  # (once: nothing of 7's is taken now)
        assert store.untake_messages([7]) == 0  # a put-back after a crash leaves it aside
        assert store.mailbox_size(pid) == 2  # kept, not lost
        # The next tool receive goes on past it.
        assert store.take_message(pid, 8, past_aside=True)["id"] == small  # type: ignore[index]
        assert store.take_message(pid, 9, past_aside=True) is None
        # The host sees it, whole, with the receive that set it aside.
        [aside] = store.messages_set_aside(pid)
        assert (aside["id"], aside["body"], aside["set_aside_by"], aside["labels"]) == (
            big, {"big": "x" * 64}, 7, ["untrusted"])
    finally:
        store.close()
    store = open_store(store_at)  # (and after a reopen)
    try:
        assert [m["id"] for m in store.messages_set_aside(pid)] == [big]
        # A receive of the planner's (not past what is set aside) takes it.
        assert store.take_message(pid, 10)["body"] == {"big": "x" * 64}  # type: ignore[index]
        assert store.messages_set_aside(pid) == []
        assert store.mailbox_size(pid) == 0
    finally:
        store.close()


def test_an_event_set_aside_is_passed_over_by_a_tools_wait_only(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        big = store.raise_event("e", {"big": 1}, None)
        after = store.raise_event("e", "after", None)
        assert store.take_event(3, "e", 7, past_aside=True)["id"] == big  # type: ignore[index]
        assert store.set_aside_events(7) == [big]
        assert store.unsee_events([7]) == 0  # (a crash's put-back leaves it set aside)
        # A tool's wait goes on past it; another process's wait is not touched.
        assert store.take_event(3, "e", 8, past_aside=True)["id"] == after  # type: ignore[index]
        assert store.take_event(3, "e", 9, past_aside=True) is None
        assert store.take_event(4, "e", 10, past_aside=True)["id"] == big  # type: ignore[index]
        [aside] = store.events_set_aside(3)
        assert (aside["id"], aside["data"], aside["set_aside_by"]) == (big, {"big": 1}, 7)
        assert store.events_set_aside(4) == []
        # The planner's wait takes it, once.
        assert store.take_event(3, "e", 11)["id"] == big  # type: ignore[index]
        assert store.event_seen_by(11)["id"] == big  # type: ignore[index]
        assert store.take_event(3, "e", 12) is None and store.events_set_aside(3) == []
    finally:
        store.close()


def test_a_receive_past_seq_2_31_sets_aside_on_both_backends(store_at: str | Path) -> None:
    """Red team 26: `aside` was INTEGER on PostgreSQL (4 bytes) though the audit seq it holds
    is BIGINT, as `taken` is: past seq 2**31 the set-aside failed, the message left taken by
    a receive that failed (not delivered, not in line). Now BIGINT (migration 15)."""
    store = open_store(store_at)
    try:
        pid = store.insert_process(parent=None, image="a", version="1", state="runnable",
                                   root="/", cwd="/")
        big = store.put_message(pid, None, {"big": 1})
        store.raise_event("e", 1, None)
        intent = 2**31 + 5
        assert store.take_message(pid, intent, past_aside=True)["id"] == big  # type: ignore[index]
        assert store.set_aside_messages(intent) == [big]
        assert [m["set_aside_by"] for m in store.messages_set_aside(pid)] == [intent]
        assert store.take_event(pid, "e", intent + 1, past_aside=True) is not None
        assert len(store.set_aside_events(intent + 1)) == 1
        assert [e["set_aside_by"] for e in store.events_set_aside(pid)] == [intent + 1]
    finally:
        store.close()
