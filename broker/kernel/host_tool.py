"""A host tool: one of the embedder's own Python functions, defined as a libos tool.

`host_tool(...)` turns a function (sync or async) into a `HostTool` value. It registers
nothing: a kernel takes it in (`Kernel.open(host_tools=[...])`, `kernel.host_tool(...)`), and
only that kernel has it (`host_tools.py`). What it declares:

* its JSON Schema: given (`schema=`), or taken from the function's type hints, pydantic
  models included, through pydantic's `TypeAdapter` (the `host` extra);
* the capability it needs: a kind and a right of its own (`email`, `send`), and the resource
  a call touches, derived from the arguments (`resource="to"`, or a function of them), so a
  capability scopes it (`email:*@example.com:send`);
* `read_only`: it changes nothing, so recovery may run it again after a crash;
* `deadline`: seconds it may run (else the kernel's call deadline).

A parameter annotated `HostCall` receives the call's context: the calling pid, the arguments
as approved, the call's durable id and the state the kernel was given for the tool. The
embedder's state reaches the function that way, never through globals.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from broker.caps import RIGHTS, CapSpec
from broker.caps.labels import parse_labels
from broker.errors import InvalidArgument
from broker.json_tree import copy_tree
from broker.syscalls.tool import TOOL_NAME

MAX_DESCRIPTION = 4096
_NAME = re.compile(TOOL_NAME["pattern"])
_ALLOWED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True, slots=True)
class HostCall:
    """What a host tool's function is told of its call."""

    pid: int                 # the calling process
    tool: str                # the tool's name
    args: dict[str, Any]     # the arguments exactly as checked, approved and audited (a copy)
    call: int                # the audit seq of the call's intent: a durable id (idempotency key)
    state: Any               # what the kernel was given for this tool (`state=`), or None


@dataclass(frozen=True, slots=True, eq=False)
class HostTool:
    """A host tool's definition (see `host_tool`)."""

    name: str
    fn: Callable[..., Any]
    kind: str
    right: str
    resource: Callable[[dict[str, Any]], Any]
    description: str
    schema: dict[str, Any]
    read_only: bool
    deadline: float | None
    context: str | None  # the parameter that receives the `HostCall`
    convert: Callable[[dict[str, Any]], dict[str, Any]]  # checked arguments → keyword arguments
    is_async: bool
    labels: frozenset[str] = frozenset()  # what its results carry (`broker.caps.labels`)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The function itself, called directly (outside libos: no check, no audit)."""
        return self.fn(*args, **kwargs)


def host_tool(fn: Callable[..., Any] | None = None, *, kind: str, right: str,
              resource: str | Callable[[dict[str, Any]], Any] | None = None,
              name: str | None = None, description: str | None = None,
              schema: dict[str, Any] | None = None, read_only: bool = False,
              deadline: float | None = None, labels: Any = None) -> Any:
    """Define a host tool (used as `@host_tool(kind=..., right=...)` or called with `fn`).

    `resource` is the name of the argument that is the call's resource, or a function of the
    arguments returning it (a str); without it the resource is the tool's name. `labels`: the
    labels of its results (`["untrusted"]` for a tool that reads email), which whoever calls
    it takes on."""

    def define(fn: Callable[..., Any]) -> HostTool:
        tool = _define(fn, kind=kind, right=right, resource=resource, name=name,
                       description=description, schema=schema, read_only=read_only,
                       deadline=deadline)
        return replace(tool, labels=parse_labels(labels, f"host tool {tool.name} labels"))

    return define if fn is None else define(fn)


def _define(fn: Callable[..., Any], *, kind: str, right: str,
            resource: str | Callable[[dict[str, Any]], Any] | None, name: str | None,
            description: str | None, schema: dict[str, Any] | None, read_only: bool,
            deadline: float | None) -> HostTool:
    if not callable(fn):
        raise InvalidArgument(f"a host tool is a function, not {type(fn).__name__}")
    name = name if name is not None else getattr(fn, "__name__", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"host tool name {str(name)[:80]!r} must match "
                              f"{TOOL_NAME['pattern']}")
    if kind in RIGHTS:
        raise InvalidArgument(f"host tool {name}: its kind must be its own, not the builtin "
                              f"kind {kind!r}")
    CapSpec(kind, "*", frozenset({right}))  # a well-formed kind and right, or InvalidArgument
    if deadline is not None and (not isinstance(deadline, int | float) or isinstance(
            deadline, bool) or not math.isfinite(deadline) or deadline <= 0):
        raise InvalidArgument(f"host tool {name}: deadline must be a positive number")
    signature = _signature(fn, name)
    context = _context_parameter(fn, signature)
    if schema is None:
        schema, convert = _from_hints(fn, signature, context, name)
    else:
        convert = copy_tree  # the function gets the checked arguments as keywords
    doc = description if description is not None else inspect.getdoc(fn) or ""
    if not isinstance(doc, str):
        raise InvalidArgument(f"host tool {name}: description must be a str")
    return HostTool(name=name, fn=fn, kind=kind, right=right, resource=_resource_of(resource, name),
                    description=doc.split("\n\n", 1)[0].strip()[:MAX_DESCRIPTION],
                    schema=schema, read_only=bool(read_only),
                    deadline=None if deadline is None else float(deadline), context=context,
                    convert=convert, is_async=inspect.iscoroutinefunction(fn))


def _signature(fn: Callable[..., Any], name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"host tool {name}: no signature ({exc})") from None


def _context_parameter(fn: Callable[..., Any], signature: inspect.Signature) -> str | None:
    """The parameter annotated `HostCall` (resolved hint, or the bare name as text)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable hints: read the annotations as written
        hints = {}
    for param in signature.parameters.values():
        hint = hints.get(param.name, param.annotation)
        if hint is HostCall or hint == "HostCall":
            return param.name
    return None


def _resource_of(resource: str | Callable[[dict[str, Any]], Any] | None,
                 name: str) -> Callable[[dict[str, Any]], Any]:
    if resource is None:
        return lambda args: name
    if isinstance(resource, str):
        key = resource
        return lambda args: args.get(key)
    if callable(resource):
        return resource
    raise InvalidArgument(f"host tool {name}: resource must be an argument name or a function")


def _from_hints(fn: Callable[..., Any], signature: inspect.Signature, context: str | None,
                name: str) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """The arguments' JSON Schema from the type hints, and the conversion of checked JSON
    arguments into the function's keyword arguments (pydantic models built), both by
    pydantic's `TypeAdapter` over the signature without the context parameter."""
    try:
        from pydantic import TypeAdapter
    except ImportError:
        raise InvalidArgument(f"host tool {name}: a schema from type hints needs pydantic "
                              "(pip install 'libos[host]'), or give schema=") from None
    try:  # (with extras: `Annotated[float, Field(le=100)]` keeps its bound)
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise InvalidArgument(f"host tool {name}: its type hints cannot be resolved "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    params = []
    for param in signature.parameters.values():
        if param.name == context:
            continue
        if param.kind not in _ALLOWED:
            raise InvalidArgument(f"host tool {name}: parameter {param.name!r} must be one "
                                  "that can be given by keyword")
        params.append(param.replace(annotation=hints.get(param.name, Any)))

    def arguments(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    arguments.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    arguments.__annotations__ = {p.name: p.annotation for p in params}
    try:
        adapter = TypeAdapter(arguments)
        schema = adapter.json_schema()
    except Exception as exc:  # pydantic's errors for types it cannot describe
        raise InvalidArgument(f"host tool {name}: no JSON Schema for its arguments "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None

    def convert(args: dict[str, Any]) -> dict[str, Any]:
        try:
            return adapter.validate_python(copy_tree(args))
        except ValueError as exc:  # pydantic's ValidationError: a constraint JSON cannot say
            raise InvalidArgument(f"tool {name}: {str(exc)[:300]}") from None

    return schema, convert
