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
  refused. The generator subclasses override exactly the generator methods that touch
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

The package, by job: `bounds` (the limits, and what a schema may contain: local refs only,
the work one value can cause), `regex` (patterns in RE2), `generator` (fastjsonschema's code
generators with RE2 and a step budget mixed in), `validator` (compiling once, the cache, and
checking a value).
"""

from broker.schema.bounds import MAX_VISITS, NO_FETCH
from broker.schema.generator import RE2_FORMATS
from broker.schema.regex import Regex, compile_regex
from broker.schema.validator import Schema, canonical, compile_schema, validate

__all__ = ["MAX_VISITS", "NO_FETCH", "RE2_FORMATS", "Regex", "Schema", "canonical",
           "compile_regex", "compile_schema", "validate"]
