"""Red team (session 16): a write of another process refused for good while a one-shot
grant's use is spent with its intent (invariant 5) must not fail that spend. PostgreSQL finds
the refusal only when the batch is sent, after the spend ran: that transaction wrote nothing
(`RefusedBeside`), and the dispatcher took its `Conflict` for "someone spent the use first":
the innocent call was denied, its use gone from the broker's memory, a false record chained.
An append is a function of the head: it is made again once the refused write is set aside."""

from __future__ import annotations

from pathlib import Path

from broker.caps.capability import Capability
from broker.store import AuditRecord
from broker.store.opening import open_store
from broker.store.refusals import WriteRefused


def test_a_spend_with_its_intent_outlives_another_s_refused_write(store_at: str | Path
                                                                    ) -> None:
    store = open_store(store_at)
    try:
        victim, spender = (store.insert_process(parent=None, image="i", version="1",
                                                state="running", root="/", cwd="/")
                           for _ in range(2))
        once = Capability(kind="fs", scope="/x", rights=frozenset({"write"}), uses=1,
                          owner=spender)
        store.insert_capabilities([("h", once)])
        store.update_process(victim, defer=True, exit_code=2**70)  # refused for good
        seq = store.append_audit(AuditRecord(phase="intent", syscall="fs.write", pid=spender),
                                 spend=once, spent_uses=None)
        assert store.last_seq() == seq
        assert [c for c in store.load_capabilities(owner=spender) if c.id == once.id] == []
        assert isinstance(store.refusals_of(victim), WriteRefused)
        assert store.refusals_of(spender) is None
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
