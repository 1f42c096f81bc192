"""The host's own acts, in the chain (docs/DESIGN.md, invariant 10).

The host is the root of authority. What it grants, registers, ends, writes and reads through
the embedding API is a record in the same hash chain as the processes' syscalls, so `libos
audit --verify` covers who was given what authority:

* `host.spawn` and `host.fork`: the process, its image, and every capability it was granted,
  in the transaction that grants them (`store.change_capabilities`);
* `host.image`: an image registered, with the sha256 of its spec, before it is stored;
* `host.exit`: a host-driven process ended with a status;
* `host.obj.put` / `host.obj.get` / `host.fs.write` / `host.fs.read`: the host's own objects
  and files (`host_api.py`), recorded before the act.

Other host acts have records of their own: kill, pause and resume (`proc.signal`, by
`holds.py`), answers to approval requests (`approval.answer`, by `approvals.py`, `who` naming
the front end) and revocations (`caps.revoke`, by `spawning.py`). Every one is phase `admin`
with `who` in its detail; a refused one is phase `rejected` with the typed error, and is raised.

Records stay bounded: arguments as bounded summaries (`summarize`), file data and object
values by size and hash, lists of grants whole up to `MAX_LISTED` and bound by their hash
beyond, `who` and the resource cut to length. They are data: every surface that shows them
(the CLI's tables, the approvals page) shows them inert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from broker.approvals.stored import bounded_who
from broker.errors import LibosError
from broker.kernel.audit_detail import MAX_DETAIL_STRING, summarize
from broker.kernel.faults import STORE_FAULTS, store_faults_typed
from broker.kernel.image import AgentImage
from broker.kernel.summary import without_surrogates
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import canonical_json, storable_pid
from broker.store.ends import ENDING

if TYPE_CHECKING:
    from broker.kernel.image_making import ImageMaker
    from broker.kernel.images import Images

HOST = "host"
MAX_LISTED = 64  # items a list in a record holds whole; a longer one is bound by its hash
MAX_RESOURCE = 512
EXACT = ("caps", "needs", "revoked")  # grants, needs and ids: whole, never summarized


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value_digest(value: Any) -> dict[str, Any]:
    """A value by size and hash: the chain binds it without holding it."""
    text = canonical_json(value).encode()
    return {"size": len(text), "sha256": sha256(text)}


def listed(name: str, items: list[Any]) -> dict[str, Any]:
    """A list for a record: whole up to `MAX_LISTED` items; a longer one is cut there and
    bound whole by its count and sha256 (so no grant escapes the chain)."""
    if len(items) <= MAX_LISTED:
        return {name: items}
    return {name: items[:MAX_LISTED], f"{name}_total": len(items),
            f"{name}_sha256": value_digest(items)["sha256"]}


def host_record(act: str, *, pid: int | None = None, resource: str | None = None,
                who: str = HOST, phase: str = "admin", **detail: Any) -> AuditRecord:
    """A record of one host act. `detail` values are summarized (bounded), except the exact
    lists of grants and ids (`EXACT`), which `listed` bounds."""
    shown: dict[str, Any] = {"who": bounded_who(who)}
    for key, value in detail.items():
        if key in EXACT and isinstance(value, list):
            shown.update(listed(key, value))
        else:
            shown[key] = summarize(value)
    return AuditRecord(phase=phase, syscall=act, pid=storable_pid(pid),
                       resource=None if resource is None else str(resource)[:MAX_RESOURCE],
                       detail=shown)


@contextmanager
def refused(store: SQLiteStore, act: str, *, pid: Any = None, resource: Any = None,
            who: str = HOST, **detail: Any) -> Iterator[None]:
    """A host act refused with a typed error is recorded (phase `rejected`), then raised;
    so is one whose store write fails (a typed `Conflict`, never the driver's error), after
    its record too. A store that cannot write the refusal either: the error is raised.
    An act that ends a process (`broker.store.ends`) says in `since` the head before it: its
    refusal takes back only an end it recorded after that, never an earlier act's."""
    if act in ENDING:
        with suppress(*STORE_FAULTS, LibosError):
            detail = {**detail, "since": store.head_seq}
    try:
        with store_faults_typed:
            yield
    except LibosError as exc:
        # (What was refused may hold text the store cannot: a lone surrogate, shown U+FFFD.)
        with suppress(*STORE_FAULTS):
            store.append_audit(host_record(
                act, pid=pid, resource=None if resource is None else without_surrogates(
                    str(resource)), who=who, phase="rejected", **without_surrogates(detail),
                error=exc.code, message=exc.message[:MAX_DETAIL_STRING]))
        raise


async def register_image(images: Images, store: SQLiteStore,
                         image: AgentImage | Mapping[str, Any]) -> AgentImage:
    """The host registers an image: recorded (`host.image`, with the sha256 of the spec as
    stored and the needs it declares) once every check passed, before it is stored."""
    def record(checked: AgentImage) -> None:
        store.append_audit(image_record(checked))

    name = image.name if isinstance(image, AgentImage) else (
        image.get("name") if isinstance(image, Mapping) else None)
    name = name if isinstance(name, str) else None  # (anything else is refused: not named)
    with refused(store, "host.image", resource=name, image=name):
        return await images.register_image(image, record=record)


def image_record(image: AgentImage, **detail: Any) -> AuditRecord:
    """`host.image`: an image the host stores, with the sha256 of its spec as stored (what
    vouches for its row: `broker.store.vouch.ImageDigests`) and the needs it declares."""
    spec = image.to_json()
    return host_record(
        "host.image", resource=f"{image.name}:{image.version}", image=image.name,
        version=image.version, spec=value_digest(spec),
        tools=[t if isinstance(t, str) else t["name"] for t in image.tools],
        needs=spec["needs"], **detail)


def commit_image(maker: ImageMaker, store: SQLiteStore, pid: int, name: str) -> AgentImage:
    """The host commits process `pid` as an image: recorded (`host.image`, naming the
    process) once it is stored, as only the store gives it its version."""
    with refused(store, "host.image", resource=name, image=name, committed_from=pid):
        image = maker.commit(pid, name)
        store.append_audit(image_record(image, committed_from=pid))
        return image
