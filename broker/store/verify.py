"""Verifying the audit: the hash chain, and everything it vouches for outside itself.

One pass over the records checks the chain's links and hashes, collects what brokers found
wrong when they opened the store (`audit.anchor` records, honoured only as the broker writes
them), and checks each payload against the hash its record carries. Then the tool sources,
the stored tool registrations, images, capability rows and live processes are checked
against the chain, and the head against its anchor. Each problem is a line naming the record
it concerns.

`after`/`pid` verify a stretch (for replay): the records after `after`, the tool sources
registered in it, and the stored registrations of process `pid`.

The signed anchor is checked with the public key alone: the one a caller gives, else the
writer's own, else the public half of the local key (`broker.store.keys`). A signature by a
key the trusted one endorsed (a rotation, recorded in the chain) counts too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

from broker.store import anchor, capvouch, marked, recordsig, remembered, signing, vouch
from broker.store.audit import GENESIS, StoredRecord, is_broker_anchor
from broker.store.interface import Store
from broker.store.json_column import Unreadable
from broker.store.links import ChainLinks
from broker.store.recordsig import RecordSignatures, key_endorsements


def audit_problems(store: Store, *, after: int = 0, pid: int | None = None,
                   public_key: str | None = None, trust: Iterable[str] = ()
                   ) -> tuple[int, list[str]]:
    found: list[str] = []
    payloads: list[str] = []
    registered = vouch.Registrations()
    images = vouch.ImageDigests()
    trusted = trusted_keys(store, public_key, trust)
    # Signed vouching records (shared stores: `recordsig`), checked over the whole chain.
    signatures = None if after else RecordSignatures(  # (a shared broker's: its marker too)
        trusted, *marked.recalled(store))
    links = ChainLinks(signatures=signatures)  # (fed by this walk: vouching only where whole)
    grants = capvouch.CapDigests(links=links)
    endorsements: list[signing.Endorsement] = []

    def walk() -> Iterator[StoredRecord]:
        for stored, payload in store.audit_records_with_payloads(after=after):
            found.extend(chain_notes(stored, endorsements))
            problem = vouch.payload_problem(stored, payload)
            if problem is not None:
                payloads.append(f"record {stored.seq}: {problem}")
            registered.see(stored)
            images.see(stored)
            grants.see(stored)
            yield stored

    start = (after, store.hash_at(after) or "") if after else (0, GENESIS)
    count, problems = links.check(walk(), after=start)
    lines = [str(p) for p in problems] + found + payloads
    lines += source_problems(store, registered, whole=after == 0)
    lines += registration_problems(store, registered, pid=pid)
    if not after:  # (a stretch's images were registered before it)
        lines += image_problems(store, images)
        lines += capability_problems(store, grants)
        grants.settle()  # (ends count only outside the unvouched spans it settles)
        lines += revived_problems(store, links) + label_problems(store, links)
    if after:
        # The endorsements of keys the stretch's anchor may be signed by lie before it.
        endorsements += key_endorsements(store.audit_records(limit=after))
    head, signed = store.read_anchor()
    trusting = partial(trusts_any, trusted, endorsements) if trusted else None
    shared = store.broker_anchors()
    if shared:  # many brokers append to the chain, each with an anchor of its own
        lines += shared_problems(store, shared, trusting)
    else:
        # (the memory is asked only of a lock file the anchor check finds sound: an older
        # genuine one put back; one removed or forged it names already)
        lines += anchor.problems(head, signed, store.last_seq(), store.hash_at,
                                 trusts=trusting) or _remembered_problems(store, signed)
    return count, lines + unsigned_problems(signatures)


def _remembered_problems(store: Store, signed: anchor.Signed | None) -> list[str]:
    """What a single writer's open would find of the lock file against the anchor this
    user's key remembers signing for the store (`broker.store.remembered`): an older one
    put back is named here too, not only at the next open."""
    memory = getattr(store, "anchor_memory", lambda: None)()
    if memory is None:
        return []
    try:
        made_again = not (store.last_seq() or store.list_processes())
    except Unreadable:  # (a row edited past reading back is a row all the same: the
        made_again = False  # audit wiped beside it is named, not an error instead, red team 12)
    return remembered.standing(memory, signed, store.last_seq(), store.hash_at,
                               made_again=made_again)[1]


def unsigned_problems(signatures: RecordSignatures | None) -> list[str]:
    """The records past the chain's `audit.signed` marker that vouch without a signature by
    a trusted key (a database writer's): each vouches for nothing; and a marker this broker
    remembers, gone from where it was."""
    if signatures is None:
        return []
    moved = signatures.moved()
    return ([] if moved is None else [moved]) + [
        f"record {seq}: it vouches (grants, makes a child, ends a process or takes an end"
        " back) but carries no signature by a key trusted here: it vouches for nothing"
        for seq in sorted(signatures.unsigned)]


def revived_problems(store: Store, links: ChainLinks) -> list[str]:
    """Processes stored live whose end the chain records (`broker.store.ends`): a row set
    live again behind the broker's back (the next open ends it again: `broker.kernel.revived`);
    and, shared, those an unsigned end holds.
    """
    found = []
    for pid in store.live_pids():
        if (seq := links.ended(pid)) is not None:
            found.append(f"process {pid}: its row says it is live, but record {seq} ended it")
        elif (seq := links.held(pid)) is not None:  # (shared: an end with no signature)
            found.append(f"process {pid}: held for an unsigned end: record {seq} would end it"
                         " but carries no signature by a key trusted here; it is not run")
    return found


def label_problems(store: Store, links: ChainLinks) -> list[str]:
    """Live processes whose row's label lacks one their records show they had
    (`broker.store.chain_labels`): dropped behind the broker's back (the next load takes it
    back: `broker.kernel.label_floor`)."""
    found = []
    for pid in store.live_pids():
        recorded = links.labels(pid)
        if not recorded:  # (a row read only for a process its records label)
            continue
        try:
            lacks = recorded - frozenset(store.get_process(pid)["labels"])
        except vouch.Tampered:  # (a row that cannot be read back: its load refuses it)
            continue
        if lacks:
            found.append(f"process {pid}: its row's label lacks {', '.join(sorted(lacks))},"
                         " which its records show it had")
    return found


def shared_problems(store: Store, anchors: list[anchor.Anchor],
                    trusting: Callable[[str], bool] | None) -> list[str]:
    """`anchor.shared_problems`, with the newest trusted anchor a verifier on this host saw
    before among the anchors (outside the database: a chain put back to an older genuine
    state is named); the newest trusted one now on the chain is remembered."""
    last = store.last_seq()
    before = store.remembered_anchor()
    if before is not None:
        anchors = [*anchors, anchor.Anchor("the newest anchor verified on this host before",
                                           None, before)]
    found = anchor.shared_problems(anchors, last, store.hash_at, trusts=trusting)
    good = [a.signed for a in anchors if a.signed is not None and trusting is not None
            and a.signed.seq <= last and a.signed.verifies() and trusting(a.signed.key)
            and store.hash_at(a.signed.seq) == a.signed.hash]
    if good:
        store.remember_anchor(max(good, key=lambda s: s.seq))
    return found


def trusted_keys(store: Store, public_key: str | None, trust: Iterable[str]) -> set[str]:
    """The keys whose signatures count, never read from the store: `public_key` alone if
    given, else this user's own (the writer's, the local key's) and those it trusts
    (`libos keys trust`, `broker.store.keys.trusted_keys`); and the keys in `trust`."""
    if public_key is not None:
        return {public_key, *trust}
    return recordsig.trusted_keys(store.signer, trust)


def trusts_any(trusted: set[str], endorsements: list[signing.Endorsement],
               signer: str) -> bool:
    return any(trusts(key, endorsements, signer) for key in trusted)


def chain_notes(stored: StoredRecord, endorsements: list[signing.Endorsement]) -> list[str]:
    """What a record of the chain's own says: a problem a broker found when it opened the
    store (a line), or a key rotation (its endorsement, collected)."""
    if is_broker_anchor(stored):
        return [f"record {stored.seq}: a broker opening the store found: "
                f"{stored.record.detail.get('problem')}"]
    endorsements.extend(key_endorsements([stored]))
    return []


def trusts(trusted: str, endorsements: list[signing.Endorsement], signer: str) -> bool:
    """A signature by `signer` counts for a verifier that trusts key `trusted`: it is that
    key, or one that key endorsed (through the chain's rotations)."""
    return signing.endorsement_path(trusted, signer, endorsements) is not None


def source_problems(store: Store, registered: vouch.Registrations, *,
                    whole: bool) -> list[str]:
    """Tool sources against their hashes (all of them, or those registered in the stretch),
    and the sources registrations name that are gone."""
    lines = []
    present = set(store.tool_source_hashes())
    for hash_ in sorted(present):
        seq = registered.first_by_hash.get(hash_)
        if seq is None and not whole:
            continue
        source = store.stored_tool_source(hash_)
        problem = None if source is None else vouch.source_problem(hash_, source)
        if problem is not None:
            lines.append(problem if seq is None else f"record {seq}: the {problem}")
    for reg in registered.current.values():
        if reg.hash not in present:
            lines.append(f"record {reg.seq}: the tool source it registered "
                         f"({reg.hash[:16]}…) is missing")
    return lines


def registration_problems(store: Store, registered: vouch.Registrations, *,
                          pid: int | None) -> list[str]:
    """Stored tool registrations (`process_tools` rows) against the chain's."""
    lines = []
    for owner, name, spec in store.stored_registrations(pid):
        if registered.is_unsettled(owner, name):
            continue  # a registration a crash cut off: never loaded (see `process_tools`)
        problem = registered.tool_problem(owner, name, spec)
        if problem is not None:
            lines.append(problem)
    return lines


def image_problems(store: Store, images: vouch.ImageDigests) -> list[str]:
    """Stored images (`images` rows) against the digests the chain carries of them."""
    found = (images.image_problem(row["name"], row["version"], row["spec"],
                                  broken_records=False)  # the chain's check names those
             for row in store.list_images())
    return [problem for problem in found if problem is not None]


def unchecked_capabilities(store: Store) -> int:
    """How many stored capability rows cannot be checked: their process was made by an
    older broker (before records carried digests)."""
    vouches = store.capability_vouches()
    return sum(cap.owner in vouches.older or not vouches.checked
               for _, cap in store.readable_capabilities()[0])


def capability_problems(store: Store, grants: capvouch.CapDigests) -> list[str]:
    """Stored capability rows against the digests the chain carries of them (those of a
    process created before records carried digests are not checked); a row that cannot be
    read back is named, and the rest still checked."""
    readable, damaged = store.readable_capabilities()
    found = (grants.problem(handle, cap) for handle, cap in readable)
    present = [*(cap.id for _, cap in readable), *damaged]
    return (list(damaged.values()) + grants.deleted(present)
            + [problem for problem in found if problem is not None])
