"""What a reader (`libos ps`: no lock, no writer's key) counts of the chain's ends and births:
only what the signed anchor vouches for, as the broker's next open counts them (docs/DESIGN.md,
invariant 15). A record past the anchor's signed head (a database writer's, appended without
the key, or a running broker's newest, signed within a moment) ends nothing, takes no end
back and makes no child here, nor does one in a `caps.unvouched` note's span, so a take-back
forged there shows no row the broker refuses as runnable (red team 10). A lock file removed or
put back older: the anchor this user's key remembers signing stands (`remembered`). An anchor
this reader cannot check (none, signed by no key it trusts, or off the chain) leaves the notes
alone to discount."""

from __future__ import annotations

import sys

from broker.store import recordsig, remembered
from broker.store.interface import Store
from broker.store.walk_memory import WalkMemory
from broker.store.walk_sweep import sweep_when_due


def count_as_anchored(store: Store) -> int:
    """Count, in `store`'s links, only what the broker's next open would: not the records past
    the head its signed anchor vouches for (nor those appended while this reader reads), nor
    those in a standing `caps.unvouched` note's span. How many lie past that head now (0: none,
    or no anchor this reader can check: then only the notes discount). It walks the chain: up
to the anchored head from where the walk this user kept of it ends (`walk_memory`)."""
    _, signed = store.read_anchor()
    last = store.last_seq()
    # (the lock file removed, or an older one put back: the anchor this user's key remembers
    # stands for it, as at a writer's open, red team 16)
    memory = getattr(store, "anchor_memory", lambda: None)()
    signed = remembered.standing(memory, signed, last, store.hash_at, made_again=False)[0]
    checked = (signed is not None and signed.verifies()
               and signed.key in recordsig.trusted_keys(store.signer)
               and signed.seq <= last and store.hash_at(signed.seq) == signed.hash)
    if checked and signed is not None:
        _walk_kept(store, signed.seq)  # (up to the head, from where this user's last walk ended)
    # (the walk, and the spans settled into the links: past the head a checked anchor vouches
    # for, as a writer's open finds it; the store's own span, a writer's, left alone)
    store.capability_vouches((signed.seq, sys.maxsize) if checked and signed else None)
    return last - signed.seq if checked and signed is not None else 0


def _walk_kept(store: Store, anchored: int) -> None:
    """Walk up to the anchored head from where the walk this user kept of `store` ended, if
    it stands (else from the start), and keep it to there (`walk_memory`): never past it."""
    memory = WalkMemory.of(store)
    links = store.chain_links()
    if memory is not None:
        memory.recall(store, links, anchored)
    links.walk(upto=anchored)
    if memory is not None:
        sweep_when_due(memory.key)  # (the walks of stores gone: at most once a day)
        memory.keep(links)
