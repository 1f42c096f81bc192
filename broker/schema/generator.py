"""fastjsonschema's draft code generators, with RE2 for every pattern and format and a step
budget spent by the generated code (`Steps`). Everything else is fastjsonschema's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft06 import CodeGeneratorDraft06
from fastjsonschema.draft07 import CodeGeneratorDraft07
from fastjsonschema.draft2019 import CodeGeneratorDraft2019

from broker.errors import InvalidArgument
from broker.schema.bounds import REGEX_VALUE_STEPS, TRIAL_STEPS, weight
from broker.schema.regex import Regex, compile_regex, re2_compile

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

    def __init__(self, *args: Any, patterns: Mapping[str, Regex] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._format_regexps: dict[str, Any] = {}
        self._patterns = patterns or {}  # compiled already (each costs milliseconds)

    def _regex(self, pattern: str) -> Regex:
        found = self._patterns.get(pattern)
        if found is None:
            found = compile_regex(pattern)
        self._compile_regexps[pattern] = found
        return found

    @property
    def global_state(self) -> dict[str, Any]:
        state = super().global_state  # type: ignore[misc]
        # `re` is what the code for `format: regex` compiles a value with.
        return {**state, "re": _DataRegex, "FORMAT_PATTERNS": self._format_regexps,
                "STEP_CONTAINERS": _CONTAINERS, "TooCostly": TooCostly,
                "NotANumber": NotANumber}

    def generate_func_code_block(self, definition: Any, variable: str, *args: Any,
                                 **kwargs: Any) -> Any:
        # Each subschema applied to a value spends from the check's budget (see Steps).
        per_item = TRIAL_STEPS if isinstance(definition, dict) and (
            "contains" in definition or "propertyNames" in definition) else 1
        # (`Steps.node` written inline: a method call per subschema and value cost more than
        # the rest of a small check.)
        self.l(f"custom_formats.left -= {weight(definition)} + ({per_item} * len({variable}) "
               f"if isinstance({variable}, STEP_CONTAINERS) else 0)")
        self.l("if custom_formats.left < 0: raise TooCostly")
        return super().generate_func_code_block(  # type: ignore[misc]
            definition, variable, *args, **kwargs)

    def generate_pattern(self) -> None:
        # RE2's `$` already means the end of the text: no rewriting to Python's `\Z`.
        with self.l("if isinstance({variable}, str):"):
            pattern = self._definition["pattern"]
            self.l("custom_formats.text({variable}, {})", self._regex(pattern).size)
            with self.l("if not REGEX_PATTERNS[{}].search({variable}):", repr(pattern)):
                self.exc("{name} must match pattern {}", self.e(pattern), rule="pattern")

    def generate_pattern_properties(self) -> None:
        self.create_variable_is_dict()
        with self.l("if {variable}_is_dict:"):
            self.create_variable_keys()
            definitions = self._definition["patternProperties"]
            if definitions == {}:
                return
            sizes = {pattern: self._regex(pattern).size for pattern in definitions}
            with self.l("for {variable}_key, {variable}_val in {variable}.items():"):
                for pattern, definition in definitions.items():
                    self.l("custom_formats.text({variable}_key, {})", sizes[pattern])
                    with self.l("if REGEX_PATTERNS[{}].search({variable}_key):", repr(pattern)):
                        with self.l("if {variable}_key in {variable}_keys:"):
                            self.l("{variable}_keys.remove({variable}_key)")
                        self.generate_func_code_block(
                            definition,
                            f"{self._variable}_val",  # type: ignore[attr-defined]
                            f"{self._variable_name}.{{{self._variable}_key}}",  # type: ignore[attr-defined]
                            clear_variables=True,
                        )

    def generate_unique_items(self) -> None:
        # fastjsonschema's check turns every item into a hashable copy, all the way down: it
        # walks the whole value, which costs a step per element it reaches.
        if self._definition["uniqueItems"]:
            with self.l("if isinstance({variable}, (list, tuple)):"):
                self.l("custom_formats.deep({variable})")
        super().generate_unique_items()  # type: ignore[misc]

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

    # A bound compares: NaN (no JSON number, but Python's json reads a model's `NaN`) is
    # neither below nor above one, so fastjsonschema's comparisons let it by. Refused here,
    # for the whole value: a `not`, an `if` or an `anyOf` around the bound would take a
    # schema error for the bound's "no" and let NaN by (`not: {minimum: 0}`).
    def _not_nan(self, rule: str) -> None:
        with self.l("if isinstance({variable}, float) and {variable} != {variable}:"):
            self.l('raise NotANumber("{name} must be a number, not NaN")')

    def generate_minimum(self) -> None:
        self._not_nan("minimum")
        super().generate_minimum()  # type: ignore[misc]

    def generate_maximum(self) -> None:
        self._not_nan("maximum")
        super().generate_maximum()  # type: ignore[misc]

    def generate_exclusive_minimum(self) -> None:
        self._not_nan("exclusiveMinimum")
        super().generate_exclusive_minimum()  # type: ignore[misc]

    def generate_exclusive_maximum(self) -> None:
        self._not_nan("exclusiveMaximum")
        super().generate_exclusive_maximum()  # type: ignore[misc]

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

    def generate_format(self) -> None:
        if self._definition["format"] != "regex":
            super().generate_format()  # type: ignore[misc]
            return
        # A value that must be a regex is compiled, by RE2, at a price (see Steps.regex).
        with self.l("if isinstance({variable}, str):"), \
                self.l("if not custom_formats.regex({variable}):"):
            self.exc("{name} must be a valid regex", rule="format")

    def _generate_format(self, format_name: str, regexp_name: str, regexp: str) -> None:
        if self._definition["format"] == format_name:
            if format_name not in self._format_regexps:
                self._format_regexps[format_name] = re2_compile(regexp)  # ours, not the schema's
            self.l("custom_formats.text({variable}, {})", self._format_regexps[format_name].size)
            with self.l('if not FORMAT_PATTERNS["{}"].match({variable}):', format_name):
                self.exc("{name} must be {}", format_name, rule="format")


class TooCostly(Exception):
    """Not a JsonSchemaValueException, so no `anyOf` or `not` in the generated code hides it."""


class NotANumber(Exception):
    """NaN at a bound: not a JsonSchemaValueException either, so no `not` turns it into a pass."""


# A tuple, not `dict | list | tuple`: a union is built anew each time the check runs.
_CONTAINERS = (dict, list, tuple)


class Steps:
    """The step budget of one check. The generated code gets it as `custom_formats` (the one
    argument fastjsonschema hands down every ref call; this module defines no custom format)."""

    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def node(self, weight: int, per_item: int, value: Any) -> None:
        self.left -= weight + (per_item * len(value) if isinstance(value, _CONTAINERS)
                               else 0)
        if self.left < 0:
            raise TooCostly

    def text(self, value: Any, size: int) -> None:
        """What matching `value` with a pattern of `size` RE2 instructions may cost."""
        if isinstance(value, str):
            length = len(value) if value.isascii() else 4 * len(value)  # UTF-8 bytes, at most
            self.left -= 1 + (length * size >> 8)
        else:
            self.left -= 1
        if self.left < 0:
            raise TooCostly

    def regex(self, value: str) -> bool:
        """Is `value` a pattern RE2 accepts? Compiling one may take milliseconds, whatever
        the answer: each costs REGEX_VALUE_STEPS."""
        self.left -= REGEX_VALUE_STEPS
        if self.left < 0:
            raise TooCostly
        try:
            compile_regex(value)
        except InvalidArgument:
            return False
        return True

    def deep(self, value: Any) -> None:
        """A step per element of `value`, nested ones included, stopping at the budget."""
        pending = [value]
        while pending:
            item = pending.pop()
            inner = item.values() if isinstance(item, dict) else item
            self.left -= 1 + len(inner)
            if self.left < 0:
                raise TooCostly
            pending += [v for v in inner if isinstance(v, _CONTAINERS)]


class _DataRegex:
    """`re` for the generated code of `format: regex`: the value is compiled by RE2."""

    compile = staticmethod(compile_regex)


def _generator(base: type) -> type:
    return type(f"Re2{base.__name__}", (_Re2Generator, base),
                {"FORMAT_REGEXS": _re2_formats(base.FORMAT_REGEXS)})


_DRAFT04, _DRAFT06, _DRAFT07, _DRAFT2019 = (
    _generator(base) for base in (CodeGeneratorDraft04, CodeGeneratorDraft06,
                                  CodeGeneratorDraft07, CodeGeneratorDraft2019))


def generator_for(schema: Any) -> type:
    """The draft `$schema` names, as fastjsonschema chooses it (2019-09 by default)."""
    version = schema.get("$schema", "") if isinstance(schema, dict) else ""
    version = version if isinstance(version, str) else ""
    for marker, generator in (("draft-04", _DRAFT04), ("draft-06", _DRAFT06),
                              ("draft-07", _DRAFT07)):
        if marker in version:
            return generator
    return _DRAFT2019
