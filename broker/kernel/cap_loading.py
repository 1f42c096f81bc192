"""A kernel's open: the capability rows it loads, as the audit chain vouches for them
(`broker.store.capvouch`, invariant 15), and the records of what it left out."""

from __future__ import annotations

from broker.caps.registry import CapabilityRegistry
from broker.errors import NotFound
from broker.store import SQLiteStore
from broker.store.audit import ANCHOR_RECORD, AuditRecord
from broker.store.capvouch import UNVOUCHED
from broker.store.recordsig import UNSIGNED, remembered_marker

# What a kernel's open records of the capability rows it left out (`load_capabilities`).
MAX_NOTED_ROWS = 16
MAX_NOTED_TEXT = 512


def load_vouched(store: SQLiteStore, caps: CapabilityRegistry) -> list[int]:
    """Load the live capability rows the chain vouches for into `caps`, recording what was
    left out. Returns the processes to list in the first host spawn or fork as an older
    broker's (`capvouch.CAP_OLDER`): all that hold rows, if no record carries digests yet."""
    refused: list[str] = []  # rows the chain does not vouch for: left out, and recorded
    vouches = store.capability_vouches()
    loaded = store.load_capabilities(live=True, refused=refused, vouches=vouches)
    for handle, cap in loaded:
        caps.load(cap, handle)
    # Bounded: the rows are anyone's who writes the database, as many and as long as they
    # like, and they are recorded again at every open.
    noted = [problem[:MAX_NOTED_TEXT] for problem in refused[:MAX_NOTED_ROWS]]
    if len(refused) > MAX_NOTED_ROWS:
        noted.append(f"{len(refused) - MAX_NOTED_ROWS} more capability rows no record "
                     "vouches for were left out (planted or edited)")
    for problem in noted:
        store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                       detail={"problem": problem}))
    unvouched = vouches.unvouched_note()
    if unvouched is not None:  # (once: its span covers them at the next open)
        store.append_audit(AuditRecord(phase="admin", syscall=UNVOUCHED, detail=unvouched))
    links = store.chain_links()
    signatures = links.signatures  # (shared: walked for `vouches` already)
    if signatures is not None:  # (each once: the next open's walk reads what they name)
        for note in (remembered_marker(store, signatures), signatures.note(links.holding)):
            if note is not None:
                store.append_audit(AuditRecord(phase="admin", syscall=UNSIGNED, detail=note))
    return [] if vouches.checked else sorted({cap.owner for _, cap in loaded})


def known(caps: CapabilityRegistry, cap_id: str) -> bool:
    """Is capability `cap_id` loaded in `caps`?"""
    try:
        caps.get(cap_id)
    except NotFound:
        return False
    return True
