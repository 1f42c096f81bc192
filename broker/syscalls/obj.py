"""obj: Object Memory — typed, versioned objects in namespaces.

A process's own namespace is `proc/<pid>` (it holds a capability for it from birth); any
other namespace, shared or another process's, needs a capability naming it, or naming the
objects in it the process may use (`obj:shared/api_key:read`; see `broker.caps.obj_scope`).
The resource of a put or a get is the object, `NS/NAME`; that of a listing is the namespace,
and a listing shows only the objects the caller could read.
"""

from __future__ import annotations

from typing import Any

from broker.caps import Decision
from broker.caps.listing import check_listing
from broker.caps.obj_scope import NAMESPACE_SCHEMA, object_resource, reaches
from broker.caps.proof import CheckedListing
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import NAME, syscall

NAMESPACE = NAMESPACE_SCHEMA
VERSION = {"type": "integer", "minimum": 1}


def own_namespace(pid: int) -> str:
    return f"proc/{pid}"


def _ns(ctx: SyscallContext, args: dict[str, Any]) -> str:
    return args.get("ns") or own_namespace(ctx.pid)


def _object(ctx: SyscallContext, args: dict[str, Any]) -> str:
    return object_resource(_ns(ctx, args), args["name"])


def _listing(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    ns = _ns(ctx, args)
    return check_listing(ctx.process.caps, "obj", "read", ns,
                         lambda name: object_resource(ns, name), reaches,
                         now=ctx.services.clock.now(), manifests=ctx.manifests,
                         args_hash=ctx.args_hash)


@syscall(
    "obj.put",
    doc="Store a new version of a typed object. With expect_version, only if that is current.",
    args={
        "name": NAME,
        "type": NAME,
        "value": {},
        "ns": NAMESPACE,
        "expect_version": {"type": "integer", "minimum": 0},
    },
    required=("name", "type", "value"),
    kind="obj",
    right="write",
    resource=_object,
)
def obj_put(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    ctx.services.object_schema_check(args["type"], args["value"])
    ns = _ns(ctx, args)
    version = ctx.services.store.put_object(
        ns, args["name"], args["type"], args["value"], pid=ctx.pid,
        expect_version=args.get("expect_version"), labels=ctx.label)
    return {"ns": ns, "name": args["name"], "version": version}


@syscall(
    "obj.get",
    idempotent=True,
    doc="Read an object (its newest version unless version is given).",
    args={"name": NAME, "ns": NAMESPACE, "version": VERSION},
    required=("name",),
    kind="obj",
    right="read",
    resource=_object,
)
def obj_get(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    row = ctx.services.store.get_object(_ns(ctx, args), args["name"], args.get("version"))
    ctx.result_labels = row["labels"]
    return {"ns": row["ns"], "name": row["name"], "version": row["version"],
            "type": row["type"], "value": row["payload"]}


@syscall(
    "obj.list",
    idempotent=True,
    doc="List the objects of a namespace this process may read: [{name, version, type}].",
    args={"ns": NAMESPACE, "prefix": {"type": "string", "maxLength": 256}},
    kind="obj",
    right="read",
    resource=_ns,
    authorize=_listing,
)
def obj_list(ctx: SyscallContext, args: dict[str, Any],
             proof: CheckedListing) -> list[dict[str, Any]]:
    rows = [r for r in ctx.services.store.list_objects(proof.resource, args.get("prefix", ""))
            if proof.visible(r["name"])]
    for row in rows:  # a name (and how many versions) is something of what its writer saw
        ctx.result_labels = ctx.result_labels | row["labels"]
    return [{"name": r["name"], "version": r["version"], "type": r["type"]} for r in rows]
