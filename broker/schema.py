"""JSON Schemas that processes and images supply: checked, bounded and compiled once.

Every schema that did not come from the broker's own code is hostile input (a tool's argument
schema, an object type, a `human.ask` answer schema). fastjsonschema turns a schema into Python
code, so this module decides what it may see and how that code may run:

* **Self-contained.** A `$ref` may only point into the schema itself (`#` or `#/json/pointer`);
  `$id` and `id`, which change what a ref means, are refused. This is checked before anything
  is compiled, and fastjsonschema's resolver is handed `NO_FETCH`, which refuses every URI
  scheme: no file or network I/O can run during compilation even if a check were missed.
* **Linear-time patterns.** `pattern`, `patternProperties` and `format` (`regex` included) run
  in RE2 (google-re2), never in Python's backtracking `re`. A pattern RE2 cannot compile is
  refused. The generator subclasses below override exactly the generator methods that touch
  `re`, and the generated code finds RE2 objects in its `REGEX_PATTERNS`/`FORMAT_PATTERNS`.
* **Bounded.** The schema's size and nesting, the number and length of its patterns, the
  generated code, and the work per validated value: refs can multiply (a chain of definitions
  each referring to the next twice costs 2^n per value), so the number of schema nodes that
  reach one value, over every path, is counted before compiling. A ref loop that never steps
  into the value (infinite recursion) is refused; a value checked against a schema that
  recurses through the value may be at most `MAX_DATA_DEPTH` deep. What is left grows with
  the value (many subschemas over a big array, patterns over long text), so the generated
  code also counts its steps as it goes, and a check past `MAX_CHECK_STEPS` stops with
  `LimitExceeded`: no check holds the broker's thread for long.
* **Pure.** Validation never fills `default`s: the value checked is the value given, so the
  arguments a tool runs with are the ones that were approved, hashed and audited.

Compiled validators are cached (least recently used) by the schema's canonical JSON.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

import re2
from fastjsonschema import JsonSchemaDefinitionException, JsonSchemaValueException
from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft06 import CodeGeneratorDraft06
from fastjsonschema.draft07 import CodeGeneratorDraft07
from fastjsonschema.draft2019 import CodeGeneratorDraft2019
from fastjsonschema.ref_resolver import RefResolver

from broker.errors import InvalidArgument, LimitExceeded

MAX_SCHEMA_BYTES = 64 * 1024  # canonical JSON
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays of the schema document
MAX_PATTERNS = 128
MAX_PATTERN_CHARS = 1024
MAX_CODE_CHARS = 256 * 1024  # generated Python: compiling it holds the GIL
MAX_VISITS = 10_000  # schema nodes applied to one value, summed over every path that reaches it
MAX_DATA_DEPTH = 32  # nesting of a value checked against a schema that recurses through values
# Work one check may do: a step per subschema applied, plus the length of each object or array
# it applies to, plus a step per 256 characters a pattern or format reads.
MAX_CHECK_STEPS = 1_000_000
TRIAL_STEPS = 20  # a subschema only tried (anyOf, oneOf, not, if, contains, propertyNames)
CACHE_SIZE = 256
RE2_MAX_MEM = 1 << 20  # per compiled pattern


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    options.never_capture = True
    return options


_OPTIONS = _re2_options()


class Regex:
    """An RE2 pattern answering the two questions fastjsonschema's code asks, `search` and
    `match`, yes or no. (google-re2's public `search` also builds a match object with decoded
    offsets, about four times the cost of the answer; the pinned binding's `_re2.RE2` gives
    the answer alone.)"""

    __slots__ = ("_re2",)

    def __init__(self, compiled: Any) -> None:
        self._re2 = compiled

    def search(self, text: str) -> bool:
        return self._ask(_Binding.UNANCHORED, text)

    def match(self, text: str) -> bool:
        return self._ask(_Binding.ANCHOR_START, text)

    def _ask(self, anchor: Any, text: str) -> bool:
        if not isinstance(text, str):
            raise TypeError(f"a pattern matches text, not {type(text).__name__}")
        data = text.encode()
        return self._re2.Match(anchor, data, 0, len(data))[0] != _Binding.NO_MATCH


class _Binding:
    """google-re2's own names, in one place."""

    RE2 = re2._re2.RE2
    UNANCHORED = re2._Anchor.UNANCHORED
    ANCHOR_START = re2._Anchor.ANCHOR_START
    NO_MATCH = re2._NULL_SPAN


def compile_regex(pattern: Any) -> Regex:
    """An RE2 regular expression (matching in time linear in the input), or InvalidArgument."""
    if not isinstance(pattern, str):
        raise InvalidArgument("a pattern must be a string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgument(f"a pattern is longer than {MAX_PATTERN_CHARS} characters")
    return _re2_compile(pattern)


def _re2_compile(pattern: str) -> Regex:
    try:
        compiled = _Binding.RE2(pattern.encode(), _OPTIONS)
    except (re2.error, ValueError, TypeError) as exc:  # e.g. a lone surrogate
        raise InvalidArgument(f"pattern {pattern[:80]!r} is not accepted by RE2: "
                              f"{_text(exc)}") from None
    if not compiled.ok():
        raise InvalidArgument(f"pattern {pattern[:80]!r} is not accepted by RE2: "
                              f"{_text(ValueError(compiled.error()))}")
    return Regex(compiled)


def _text(exc: BaseException) -> str:
    message = exc.args[0] if exc.args else exc
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message)[:200]


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


# -- fastjsonschema's formats, in RE2 ----------------------------------------------------------

# fastjsonschema writes its format regexes for Python `re`: `\Z` and `{,n}` become RE2's `\z`
# and `{0,n}`; the three that use look-around are rewritten to the same languages without it
# (idn-hostname ends in `$`, which in RE2 is the end of the text: no final newline slips by).
RE2_FORMATS = {
    "email": r"^[^@.]+(?:\.[^@.]+)*@[^@]+\.[^@]+\z",
    "idn-hostname": (
        r"^(?:xn--)?[a-zA-Z0-9][a-zA-Z0-9-_]{0,61}[a-zA-Z0-9]{0,1}\."
        r"(?:xn--[a-zA-Z0-9\-]{1,50}|xn--[a-zA-Z0-9-]{1,30}\.[a-zA-Z]{2,}"
        r"|[a-zA-Z0-9][a-zA-Z0-9\-]{0,49}|[a-zA-Z0-9][a-zA-Z0-9-]{0,29}\.[a-zA-Z]{2,})$"),
    "duration": (
        r"^P(?:[0-9]+W"
        r"|(?:[0-9]+Y(?:[0-9]+M)?(?:[0-9]+D)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)(?:T{t})?|T{t})\z"
    ).replace("{t}", r"(?:[0-9]+H(?:[0-9]+M)?(?:[0-9]+S)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)"),
}


def _re2_formats(formats: Mapping[str, str]) -> dict[str, str]:
    return {name: RE2_FORMATS.get(name) or regex.replace(r"\Z", r"\z").replace("{,", "{0,")
            for name, regex in formats.items()}


class _Re2Generator:
    """Mixed into each of fastjsonschema's draft generators: the methods that use Python `re`
    while generating, redone with RE2. Everything else is fastjsonschema's own."""

    _compile_regexps: dict[str, Any]
    _definition: Any
    FORMAT_REGEXS: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._format_regexps: dict[str, Any] = {}

    @property
    def global_state(self) -> dict[str, Any]:
        state = super().global_state  # type: ignore[misc]
        # `re` is what the code for `format: regex` compiles a value with.
        return {**state, "re": _DataRegex, "FORMAT_PATTERNS": self._format_regexps}

    def generate_func_code_block(self, definition: Any, variable: str, *args: Any,
                                 **kwargs: Any) -> Any:
        # Each subschema applied to a value spends from the check's budget (see _Steps).
        per_item = TRIAL_STEPS if isinstance(definition, dict) and (
            "contains" in definition or "propertyNames" in definition) else 1
        self.l(f"custom_formats.node({_weight(definition)}, {per_item}, {variable})")
        return super().generate_func_code_block(  # type: ignore[misc]
            definition, variable, *args, **kwargs)

    def generate_pattern(self) -> None:
        # RE2's `$` already means the end of the text: no rewriting to Python's `\Z`.
        with self.l("if isinstance({variable}, str):"):
            pattern = self._definition["pattern"]
            self._compile_regexps[pattern] = compile_regex(pattern)
            self.l("custom_formats.text({variable})")
            with self.l("if not REGEX_PATTERNS[{}].search({variable}):", repr(pattern)):
                self.exc("{name} must match pattern {}", self.e(pattern), rule="pattern")

    def generate_pattern_properties(self) -> None:
        self.create_variable_is_dict()
        with self.l("if {variable}_is_dict:"):
            self.create_variable_keys()
            definitions = self._definition["patternProperties"]
            if definitions == {}:
                return
            for pattern in definitions:
                self._compile_regexps[pattern] = compile_regex(pattern)
            with self.l("for {variable}_key, {variable}_val in {variable}.items():"):
                for pattern, definition in definitions.items():
                    self.l("custom_formats.text({variable}_key)")
                    with self.l("if REGEX_PATTERNS[{}].search({variable}_key):", repr(pattern)):
                        with self.l("if {variable}_key in {variable}_keys:"):
                            self.l("{variable}_keys.remove({variable}_key)")
                        self.generate_func_code_block(
                            definition,
                            f"{self._variable}_val",  # type: ignore[attr-defined]
                            f"{self._variable_name}.{{{self._variable}_key}}",  # type: ignore[attr-defined]
                            clear_variables=True,
                        )

    def generate_required(self) -> None:
        # With `additionalProperties: false`, fastjsonschema matches each required name against
        # the patternProperties keys with Python `re` while generating, only to refuse a schema
        # no object can meet. Such a schema is left to fail every value instead.
        definition = self._definition
        self._definition = {**definition, "additionalProperties": True}
        try:
            super().generate_required()  # type: ignore[misc]
        finally:
            self._definition = definition

    def exc(self, msg: str, *args: Any, append_to_msg: str | None = None,
            rule: str | None = None) -> None:
        # fastjsonschema's detailed errors copy the whole subschema into every `raise` (code
        # that grows with depth x size); its plain ones drop `append_to_msg` (which properties
        # are missing). Plain errors, with that part kept.
        message = '"' + msg + '"' + (f" + ({append_to_msg})" if append_to_msg else "")
        definition = self._definition
        rule_value = definition.get(rule) if rule and isinstance(definition, dict) else None
        self.l("raise JsonSchemaValueException(" + message + ")", *args,
               definition_rule=self.e(rule_value))  # `const` names its value

    def _generate_format(self, format_name: str, regexp_name: str, regexp: str) -> None:
        if self._definition["format"] == format_name:
            if format_name not in self._format_regexps:
                self._format_regexps[format_name] = _re2_compile(regexp)  # ours, not the schema's
            self.l("custom_formats.text({variable})")
            with self.l('if not FORMAT_PATTERNS["{}"].match({variable}):', format_name):
                self.exc("{name} must be {}", format_name, rule="format")


class _TooCostly(Exception):
    """Not a JsonSchemaValueException, so no `anyOf` or `not` in the generated code hides it."""


class _Steps:
    """The step budget of one check. The generated code gets it as `custom_formats` (the one
    argument fastjsonschema hands down every ref call; this module defines no custom format)."""

    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def node(self, weight: int, per_item: int, value: Any) -> None:
        self.left -= weight + (per_item * len(value) if isinstance(value, dict | list | tuple)
                               else 0)
        if self.left < 0:
            raise _TooCostly

    def text(self, value: Any) -> None:
        self.left -= 1 + (len(value) >> 8 if isinstance(value, str) else 0)
        if self.left < 0:
            raise _TooCostly


class _DataRegex:
    """`re` for the generated code of `format: regex`: the value is compiled by RE2."""

    compile = staticmethod(compile_regex)


def _generator(base: type) -> type:
    return type(f"Re2{base.__name__}", (_Re2Generator, base),
                {"FORMAT_REGEXS": _re2_formats(base.FORMAT_REGEXS)})


_DRAFT04, _DRAFT06, _DRAFT07, _DRAFT2019 = (
    _generator(base) for base in (CodeGeneratorDraft04, CodeGeneratorDraft06,
                                  CodeGeneratorDraft07, CodeGeneratorDraft2019))


def _generator_for(schema: Any) -> type:
    """The draft `$schema` names, as fastjsonschema chooses it (2019-09 by default)."""
    version = schema.get("$schema", "") if isinstance(schema, dict) else ""
    version = version if isinstance(version, str) else ""
    for marker, generator in (("draft-04", _DRAFT04), ("draft-06", _DRAFT06),
                              ("draft-07", _DRAFT07)):
        if marker in version:
            return generator
    return _DRAFT2019


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


def _refuse_outside_refs(value: Any, depth: int = 0, walked: bool = True) -> None:
    """Anywhere in the document: a `$ref` must be local, and no `$id`/`id` may set a base URI
    (`walked`: fastjsonschema's resolver reads `id` in every object reached through objects)."""
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidArgument(f"schema nested deeper than {MAX_SCHEMA_DEPTH}")
    if isinstance(value, list):
        for item in value:
            _refuse_outside_refs(item, depth + 1, walked=False)
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
        _refuse_outside_refs(item, depth + 1, walked)


class _Shape:
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
        self.weight[key] = _weight(node)
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


def _weight(node: Any) -> int:
    """Steps one application of a subschema costs, before the value's own size: one, one per
    entry of its lists, and `TRIAL_STEPS` per subschema only tried (a failed try raises)."""
    if not isinstance(node, dict):
        return 1
    lists = sum(len(node[k]) for k in ("enum", "required", "type")
                if isinstance(node.get(k), list))
    trials = sum(len(node[k]) for k in ("anyOf", "oneOf") if isinstance(node.get(k), list))
    trials += sum(1 for k in ("not", "if") if k in node)
    return 1 + lists + TRIAL_STEPS * trials


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _values(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, dict) else []


# -- compiling and checking --------------------------------------------------------------------


class Schema:
    """A compiled, bounded validator. `check` raises InvalidArgument and never changes the
    value it checks."""

    __slots__ = ("_recursive", "_validate")

    def __init__(self, validate: Callable[[Any], Any], recursive: bool) -> None:
        self._validate = validate
        self._recursive = recursive

    def check(self, value: Any, what: str) -> None:
        if self._recursive and _deeper_than(value, MAX_DATA_DEPTH):
            raise InvalidArgument(f"{what}: nested deeper than {MAX_DATA_DEPTH}")
        try:
            self._validate(value, _Steps(MAX_CHECK_STEPS))
        except JsonSchemaValueException as exc:
            raise InvalidArgument(f"{what}: {exc.message}") from None
        except _TooCostly:
            raise LimitExceeded(f"{what}: checking the value against its schema takes more "
                                f"than {MAX_CHECK_STEPS} steps") from None
        except (ArithmeticError, RecursionError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{what}: the value cannot be checked "
                                  f"({type(exc).__name__})") from None


def _deeper_than(value: Any, limit: int) -> bool:
    level = [value]
    for _ in range(limit + 1):
        level = [v for c in level
                 for v in (c.values() if isinstance(c, dict) else c if isinstance(c, list)
                           else ())]
        if not level:
            return False
    return True


def canonical(schema: Any) -> str:
    """The schema as canonical JSON (sorted keys, no spaces), or InvalidArgument."""
    if not isinstance(schema, dict | bool):
        raise InvalidArgument("a schema must be a JSON object (or a boolean)")
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(f"a schema must be plain JSON ({type(exc).__name__})") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidArgument(f"schema larger than {MAX_SCHEMA_BYTES} bytes")
    return text


def _compile(text: str) -> Schema:
    source = json.loads(text)  # a private copy: fastjsonschema rewrites refs in place
    _refuse_outside_refs(source)
    shape = _Shape(source)
    if len(shape.patterns) > MAX_PATTERNS:
        raise InvalidArgument(f"schema has more than {MAX_PATTERNS} patterns")
    for pattern in shape.patterns:
        compile_regex(pattern)
    _, recursive = shape.visits_per_value()
    definition = json.loads(text)
    try:
        resolver = RefResolver.from_schema(definition, handlers=NO_FETCH, store={})
        generator = _generator_for(definition)(
            definition, resolver=resolver, use_default=False, detailed_exceptions=False)
        code = generator.func_code
        if len(code) > MAX_CODE_CHARS:
            raise InvalidArgument(f"schema compiles to more than {MAX_CODE_CHARS} characters "
                                  "of code")
        state = generator.global_state
        exec(compile(code, "<schema>", "exec"), state)
        validate = state[resolver.get_scope_name()]
    except InvalidArgument:
        raise
    except Exception as exc:  # a hostile schema must not reach a caller as anything but this
        raise InvalidArgument(f"bad schema: {_text(exc)}") from None
    return Schema(validate, recursive)


_cache: OrderedDict[bytes, Schema] = OrderedDict()
_cache_lock = threading.Lock()


def compile_schema(schema: Any, what: str = "schema") -> Schema:
    """Compile (or find in the cache) a schema from a process or an image. InvalidArgument,
    prefixed with `what`, for anything refused."""
    try:
        text = canonical(schema)
        key = hashlib.sha256(text.encode()).digest()
        with _cache_lock:
            found = _cache.get(key)
            if found is not None:
                _cache.move_to_end(key)
                return found
        compiled = _compile(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def validate(schema: Any, value: Any, what: str) -> None:
    """Check `value` against `schema` (compiled once); InvalidArgument if it does not fit."""
    compile_schema(schema, what).check(value, what)
