"""What a schema may be: its limits, refs only into itself, and the work one value can cause.

Checked before fastjsonschema sees the schema (see `broker.schema.validator`); `NO_FETCH`
makes its resolver refuse every URI even if a check here were missed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

from fastjsonschema import JsonSchemaDefinitionException

from broker.errors import InvalidArgument

MAX_SCHEMA_BYTES = 64 * 1024  # canonical JSON
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays of the schema document
MAX_PATTERNS = 128
MAX_PATTERN_CHARS = 1024
MAX_CODE_CHARS = 256 * 1024  # generated Python: compiling it holds the GIL
MAX_VISITS = 10_000  # schema nodes applied to one value, summed over every path that reaches it
MAX_DATA_DEPTH = 32  # nesting of a value checked against a schema that recurses through values
MAX_PATTERN_PROGRAM = 1 << 15  # RE2 instructions of a schema's patterns, in all (compiling)
# Work one check may do: a step per subschema applied, plus the length of each object or array
# it applies to, plus what patterns and formats read (the text's bytes times the pattern's RE2
# program size, over 256: what matching costs when RE2 has to fall back to its NFA), plus a
# step per element an `enum` or `const` compares or `uniqueItems` copies (nested ones
# included), plus REGEX_VALUE_STEPS per value compiled for `format: regex`.
MAX_CHECK_STEPS = 1_000_000
REGEX_VALUE_STEPS = 10_000  # about the longest RE2 compile of a pattern (a few ms)
TRIAL_STEPS = 20  # a subschema only tried (anyOf, oneOf, not, if, contains, propertyNames)
CACHE_SIZE = 256
RE2_MAX_MEM = 1 << 20  # per compiled pattern


class _NoFetch(Mapping[str, Callable[[str], Any]]):
    """fastjsonschema's `handlers` (URI scheme → fetcher): every scheme is present, and each
    fetch is refused, so its urllib fallback can never run."""

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return self._refuse

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, scheme: object) -> bool:
        return True

    @staticmethod
    def _refuse(uri: str) -> NoReturn:
        raise JsonSchemaDefinitionException(f"remote reference {uri[:200]!r} is not fetched")


NO_FETCH = _NoFetch()


# -- what a schema may contain -----------------------------------------------------------------

# Keywords whose values are subschemas, by how they apply: to the same value, or to the
# values inside it (a property, an item, a key).
SAME_ONE = ("not", "if", "then", "else")
SAME_LIST = ("allOf", "anyOf", "oneOf")
SAME_MAP = ("dependencies", "dependentSchemas")
INNER_ONE = ("additionalProperties", "additionalItems", "contains", "propertyNames",
             "unevaluatedProperties", "unevaluatedItems")
INNER_LIST = ("prefixItems",)
INNER_MAP = ("properties", "patternProperties")


def refuse_outside_refs(value: Any, depth: int = 0, walked: bool = True) -> None:
    """Anywhere in the document: a `$ref` must be local, and no `$id`/`id` may set a base URI
    (`walked`: fastjsonschema's resolver reads `id` in every object reached through objects)."""
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidArgument(f"schema nested deeper than {MAX_SCHEMA_DEPTH}")
    if isinstance(value, list):
        for item in value:
            refuse_outside_refs(item, depth + 1, walked=False)
        return
    if not isinstance(value, dict):
        return
    ref = value.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise InvalidArgument(f"$ref {ref[:200]!r} is not local: a schema may only refer "
                              "into itself (#/...)")
    for key in ("$id", "id") if walked else ("$id",):
        if isinstance(value.get(key), str):
            raise InvalidArgument(f"{key} {value[key][:200]!r} is not accepted: a schema is "
                                  "self-contained")
    for item in value.values():
        refuse_outside_refs(item, depth + 1, walked)


class Shape:
    """The schema as a graph of subschemas, with edges that apply to the same value and edges
    into inner values: enough to count the work one value can cause."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes: dict[int, Any] = {}
        self.same: dict[int, list[int]] = {}
        self.inner: dict[int, list[int]] = {}
        self.weight: dict[int, int] = {}
        self.patterns: set[str] = set()
        pending = [root]
        while pending:
            node = pending.pop()
            if isinstance(node, dict) and id(node) not in self.nodes:
                pending.extend(self._add(node))

    def _add(self, node: dict[str, Any]) -> list[Any]:
        key = id(node)
        self.nodes[key] = node
        same: list[Any] = []
        inner: list[Any] = []
        if isinstance(node.get("$ref"), str):
            same.append(self._resolve(node["$ref"]))  # fastjsonschema ignores its siblings
        else:
            same.extend(node.get(k) for k in SAME_ONE)
            for k in SAME_LIST:
                same.extend(_items(node.get(k)))
            for k in SAME_MAP:
                same.extend(_values(node.get(k)))
            inner.extend(node.get(k) for k in INNER_ONE)
            for k in INNER_LIST:
                inner.extend(_items(node.get(k)))
            for k in INNER_MAP:
                inner.extend(_values(node.get(k)))
            items = node.get("items")
            inner.extend(_items(items) if isinstance(items, list) else [items])
            if isinstance(node.get("pattern"), str):
                self.patterns.add(node["pattern"])
            if isinstance(node.get("patternProperties"), dict):
                self.patterns.update(node["patternProperties"])
        same = [s for s in same if isinstance(s, dict)]
        inner = [s for s in inner if isinstance(s, dict)]
        self.same[key] = [id(s) for s in same]
        self.inner[key] = [id(s) for s in inner]
        self.weight[key] = weight(node)
        return same + inner

    def _resolve(self, ref: str) -> Any:
        """A local JSON pointer, read as fastjsonschema's resolver reads it."""
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            raise InvalidArgument(f"$ref {ref[:200]!r}: only JSON pointers (#/...) are accepted")
        target = self.root
        fragment = fragment.lstrip("/")
        for part in unquote(fragment).split("/") if fragment else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                raise InvalidArgument(f"$ref {ref[:200]!r} points at nothing")
        if not isinstance(target, dict | bool):
            raise InvalidArgument(f"$ref {ref[:200]!r} does not point at a schema")
        return target

    def visits_per_value(self) -> tuple[int, bool]:
        """(the most schema-node applications one value can meet, whether the schema recurses
        through values). Refuses a ref loop that stays on one value."""
        order = self._same_order()
        worst = 0
        arriving = {id(self.root): 1} if isinstance(self.root, dict) else {}
        for _depth in range(MAX_DATA_DEPTH + 1):
            if not arriving:
                return worst, False
            reached = self._spread(arriving, order)
            worst = max(worst, sum(n * self.weight[k] for k, n in reached.items()))
            if worst > MAX_VISITS:
                raise InvalidArgument(
                    f"schema applies more than {MAX_VISITS} subschemas to one value "
                    "(refs that multiply)")
            arriving = {}
            for key, count in reached.items():
                for child in self.inner[key]:
                    arriving[child] = arriving.get(child, 0) + count
        return worst, bool(arriving)

    def _same_order(self) -> dict[int, int]:
        """Topological rank of the nodes along same-value edges (Kahn); a cycle is refused."""
        incoming = dict.fromkeys(self.nodes, 0)
        for children in self.same.values():
            for child in children:
                incoming[child] += 1
        ready = [k for k, n in incoming.items() if n == 0]
        rank: dict[int, int] = {}
        while ready:
            key = ready.pop()
            rank[key] = len(rank)
            for child in self.same[key]:
                incoming[child] -= 1
                if incoming[child] == 0:
                    ready.append(child)
        if len(rank) != len(self.nodes):
            raise InvalidArgument("schema refers to itself without stepping into the value "
                                  "(a $ref loop)")
        return rank

    def _spread(self, arriving: dict[int, int], rank: dict[int, int]) -> dict[int, int]:
        """How many paths reach each node on the same value, from the nodes it arrived at."""
        reached = dict(arriving)
        heap = [(rank[k], k) for k in reached]
        heapq.heapify(heap)
        done: set[int] = set()
        while heap:
            _, key = heapq.heappop(heap)
            if key in done:
                continue
            done.add(key)
            for child in self.same[key]:
                if child not in reached:
                    heapq.heappush(heap, (rank[child], child))
                reached[child] = reached.get(child, 0) + reached[key]
                if reached[child] > MAX_VISITS:
                    raise InvalidArgument(
                        f"schema applies more than {MAX_VISITS} subschemas to one value "
                        "(refs that multiply)")
        return reached


def weight(node: Any) -> int:
    """Steps one application of a subschema costs, before the value's own size: one, one per
    entry of its lists, one per element an `enum` or `const` compares (its code compares
    nested values element by element, unrolled), and `TRIAL_STEPS` per subschema only tried
    (a failed try raises)."""
    if not isinstance(node, dict):
        return 1
    lists = sum(len(node[k]) for k in ("required", "type") if isinstance(node.get(k), list))
    lists += sum(_elements(node[k]) for k in ("enum", "const") if k in node)
    trials = sum(len(node[k]) for k in ("anyOf", "oneOf") if isinstance(node.get(k), list))
    trials += sum(1 for k in ("not", "if") if k in node)
    return 1 + lists + TRIAL_STEPS * trials


def _elements(value: Any) -> int:
    """How many values `value` holds, itself and nested ones (a schema's part: bounded)."""
    if isinstance(value, dict):
        return 1 + sum(_elements(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_elements(v) for v in value)
    return 1


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _values(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, dict) else []
