"""image: images a process makes — registered within its own authority, or committed from a
process's latest checkpoint. Both need `image:<name>:register`; what the image may hold is
checked here, in the check step (see `broker.kernel.image_making`)."""

from __future__ import annotations

from typing import Any

from broker.caps import Decision
from broker.errors import NotCapable
from broker.store.vouch import SPEC_HASH
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import PID, syscall
from broker.syscalls.tool import LANGS, TOOL_NAME

IMAGE_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
CAP_LIST = {"type": "array", "maxItems": 64, "items": {"type": ["object", "string"]}}
CODE_TOOL = {
    "type": "object",
    "properties": {
        "name": TOOL_NAME,
        "lang": {"enum": list(LANGS)},
        "source": {},
        "description": {"type": "string", "maxLength": 4096},
        "schema": {"type": "object"},
        "manifest": CAP_LIST,
    },
    "required": ["name", "lang", "source"],
    "additionalProperties": False,
}
IMAGE = {
    "type": "object",
    "properties": {
        "name": IMAGE_NAME,
        "tools": {"type": "array", "maxItems": 128,
                  "items": {"anyOf": [{"type": "string", "maxLength": 64}, CODE_TOOL]}},
        "needs": CAP_LIST,
        "denies": CAP_LIST,
        "budget": {"type": "object"},
        "planner": {"type": "object"},
        "types": {"type": "object", "maxProperties": 64},
        "description": {"type": "string", "maxLength": 4096},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def _register_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    image = args["image"]
    decision = ctx.check("image", "register", image["name"])
    for tool in image.get("tools", ()):
        if isinstance(tool, dict):  # code, as a run-time registration in that language
            try:
                ctx.check("tool", "register", tool["lang"])
            except NotCapable as exc:  # refused: the image is what was refused
                raise NotCapable(f"image {image['name']!r}: {exc.message}",
                                 resource=image["name"]) from None
    ctx.services.check_image_register(ctx.pid, image, ctx.manifests)
    return decision


@syscall(
    "image.register",
    doc="Register an image (needs image:<name>:register): its needs and its tools' manifests "
        "within this process's authority, its deny rules added as declared restrictions. The "
        "same name with other content is a new version. Returns {name, version, tools, needs, "
        "denies}.",
    args={"image": IMAGE},
    required=("image",),
    kind="image",
    right="register",
    resource=lambda ctx, a: a["image"]["name"],
    authorize=_register_authority,
    blocking=True,
)
async def image_register(ctx: SyscallContext, args: dict[str, Any], proof: Any
                         ) -> dict[str, Any]:
    made = await ctx.services.register_image_as(ctx.pid, args["image"])
    _vouch_for(ctx, made)
    return made


def _commit_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    decision = ctx.check("image", "register", args["name"])
    ctx.services.check_commit(ctx.pid, args.get("pid", ctx.pid))
    return decision


@syscall(
    "image.commit",
    doc="Make an image named name (needs image:<name>:register) from the latest checkpoint of "
        "this process or one below it (pid): its tool table, run-time tools included, and its "
        "planner settings; never its capabilities. Returns {name, version, origin}.",
    args={"name": IMAGE_NAME, "pid": PID},
    required=("name",),
    kind="image",
    right="register",
    resource=lambda ctx, a: a["name"],
    authorize=_commit_authority,
    blocking=True,  # it may take a checkpoint: on the broker's own thread
)
async def image_commit(ctx: SyscallContext, args: dict[str, Any], proof: Any
                       ) -> dict[str, Any]:
    made = ctx.services.commit_image(ctx.pid, args.get("pid", ctx.pid), args["name"],
                                     ctx.manifests)
    _vouch_for(ctx, made)
    return made


def _vouch_for(ctx: SyscallContext, made: dict[str, Any]) -> None:
    """The outcome's record carries the digest of the image's row as the kernel built it
    (taken out of the result), so loading it and `libos audit --verify` refuse a row edited
    after, even one edited before this record (`broker.store.vouch.ImageDigests`)."""
    ctx.outcome_detail[SPEC_HASH] = made.pop(SPEC_HASH)
