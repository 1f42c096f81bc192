"""Schemas that processes supply (broker/schema/) are attacks until proven otherwise: they
may not reach outside (remote or file refs, `$id` tricks) and may not stall the broker
(backtracking patterns, refs that multiply). Each attack gets `InvalidArgument` and an audit
record, and a legitimate neighbour still works."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
import trio

from broker import AgentImage, InvalidArgument, Kernel, LimitExceeded
from broker.schema import MAX_VISITS, RE2_FORMATS, bounds, compile_schema, validator
from broker.store import args_hash
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.test_approvals import _collect, _pending
from tests.conftest import ALL_BUILTINS, open_image
from tests.sandboxes.conftest import LIMITS, kernel_over

ECHO = "export default async function run(args: unknown) { return args; }"
LENGTH = "export default async function run(args: {s: string}) { return args.s.length; }"
LOCAL_REF = {"definitions": {"word": {"type": "string", "minLength": 1}},
             "type": "object", "properties": {"w": {"$ref": "#/definitions/word"}},
             "required": ["w"]}
EVIL = "^(a+)+$"  # backtracks 2^n on "aaaa…a!"
SENTENCE_PATTERN = r"^([\w ]+)*$"
# A neighbour's worst wait: each stall it guards against took 0.6-10 s; 0.2 s leaves room
# for a loaded machine.
LATENCY_BOUND = 0.2


# -- a loopback server that must never be asked anything ---------------------------------------

class Watched:
    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def watched_server() -> Iterator[Watched]:
    """Answers every GET with a valid schema, so a broker that fetched would carry on."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    watched = Watched(server.server_address[1])
    watched.requests = seen
    try:
        yield watched
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[Watched]:
    with watched_server() as watched:
        yield watched


def outside_refs(server: Watched, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Schemas that make a careless compiler fetch: loopback HTTP, a host file, `$id` games."""
    host_file = tmp_path / "host-secret.json"
    host_file.write_text(json.dumps({"type": "string"}))
    return {
        "http ref": {"type": "object", "properties": {"p": {"$ref": f"{server.url}/admin"}}},
        "file ref": {"$ref": host_file.as_uri()},
        "relative ref under $id": {"$id": f"{server.url}/schemas/", "type": "object",
                                   "properties": {"p": {"$ref": "admin#"}}},
        "draft-04 id": {"$schema": "http://json-schema.org/draft-04/schema#",
                        "id": f"{server.url}/", "$ref": "admin"},
        "$id with a fragment, local refs only": {
            "$id": f"{server.url}/admin#x", "definitions": {"x": {"type": "string"}},
            "properties": {"p": {"$ref": "#/definitions/x"}}},
        "nested $id": {"type": "object", "properties": {
            "p": {"$id": f"{server.url}/x/", "properties": {"q": {"$ref": "admin"}}}}},
        "id in a walked default": {"properties": {"p": {"default": {
            "id": f"{server.url}/", "$ref": "admin"}}}},
    }


def outcomes(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall and r["phase"] == "outcome"]


# -- a probe: another process's cheap syscall, timed while an attack runs ------------------------

async def worst_latency_while(kernel: Kernel, other: int,
                              attack: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run `attack` while another process asks the time over and over; returns the attack's
    result (or typed error) and the longest wait for one answer (from asking, including one
    5 ms pause between asks, to answer)."""
    results: list[Any] = []
    worst = 0.0
    done = trio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            asked = time.perf_counter()
            await trio.sleep(0.005)
            await kernel.call_tool(other, "now", {})
            worst = max(worst, time.perf_counter() - asked - 0.005)

    async def run_attack() -> None:
        await trio.sleep(0.02)  # the probe is running first
        await _collect(results, attack())
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        nursery.start_soon(run_attack)
    return results[0], worst


async def prober(kernel: Kernel) -> int:
    await kernel.register_image(AgentImage("prober", tools=("now",), needs=("clock:*:read",)))
    return kernel.spawn("prober", caps=["clock:*:read"])


# -- a kernel with Deno, for tools registered at run time ---------------------------------------

@pytest.fixture
async def dk(tmp_path: Path) -> AsyncIterator[Kernel]:
    async with DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb, check_timeout=5.0) as deno, \
            kernel_over(tmp_path, deno) as kernel:
        yield kernel


async def register(kernel: Kernel, pid: int, name: str, schema: Any, source: str = ECHO) -> Any:
    return await kernel.call_tool(pid, "register_tool", {
        "name": name, "lang": "ts", "source": source, "schema": schema})


# -- 1. no schema reaches outside ---------------------------------------------------------------

async def test_a_tool_schema_cannot_make_the_broker_fetch(dk: Kernel, server: Watched,
                                                          tmp_path: Path) -> None:
    pid = dk.spawn("agent", caps=["tool:ts:register"])
    for i, (label, schema) in enumerate(outside_refs(server, tmp_path).items()):
        with trio.fail_after(10), pytest.raises(InvalidArgument) as refused:
            await register(dk, pid, f"evil{i}", schema)
        assert "not local" in refused.value.message or "not accepted" in refused.value.message, (
            label)
        record = outcomes(dk, pid, "tool.register")[-1]
        assert record["detail"]["ok"] is False, label
        assert record["detail"]["error"] == "INVALID_ARGUMENT", label
        assert f"evil{i}" not in {t["name"] for t in dk.list_tools(pid)}, label
    assert server.requests == []

    # The neighbour: a schema that refers into itself registers, and checks calls.
    await register(dk, pid, "word", LOCAL_REF)
    assert await dk.call_tool(pid, "word", {"w": "ok"}) == {"w": "ok"}
    with pytest.raises(InvalidArgument, match=r"data\.w must be string"):
        await dk.call_tool(pid, "word", {"w": 5})


async def test_an_answer_schema_cannot_make_the_broker_fetch(kernel: Kernel, server: Watched,
                                                             tmp_path: Path) -> None:
    await open_image(kernel, needs=("human:*:ask",), tools=(*ALL_BUILTINS, "ask_human"))
    pid = kernel.spawn("agent", caps=["human:operator:ask"])  # nothing but asking a person
    for label, schema in outside_refs(server, tmp_path).items():
        with trio.fail_after(10), pytest.raises(InvalidArgument):
            await kernel.call_tool(pid, "ask_human", {"question": "n?", "schema": schema})
        record = outcomes(kernel, pid, "human.ask")[-1]
        assert record["detail"]["error"] == "INVALID_ARGUMENT", label
        assert "answer schema" in record["detail"]["message"], label
    assert server.requests == []
    assert kernel.approvals(state=None) == []  # nobody was asked

    # The neighbour: a local ref in an answer schema works, and the answer is checked by it.
    results: list[Any] = []
    schema = {"definitions": {"n": {"type": "integer", "maximum": 10}},
              "$ref": "#/definitions/n"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(
            pid, "ask_human", {"question": "n?", "schema": schema}))
        [request] = await _pending(kernel)
        with pytest.raises(InvalidArgument):
            kernel.answer(request["id"], 11)
        kernel.answer(request["id"], 7)
    assert results == [7]


async def test_an_image_type_with_an_outside_ref_is_refused(kernel: Kernel, server: Watched,
                                                            tmp_path: Path) -> None:
    for name, schema in outside_refs(server, tmp_path).items():
        with pytest.raises(InvalidArgument):
            await kernel.register_image(AgentImage("typed", types={"t": schema}))
        assert name  # every kind of outside ref is refused
    assert server.requests == []
    await kernel.register_image(AgentImage("typed", types={"t": LOCAL_REF}))


def test_the_resolver_fetches_nothing_even_if_the_check_missed(
        server: Watched, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with both ref checks switched off, fastjsonschema's resolver still
    cannot fetch (every URI scheme has a handler, and each refuses)."""
    monkeypatch.setattr(validator, "refuse_outside_refs", lambda *a, **k: None)
    resolve = bounds.Shape._resolve
    monkeypatch.setattr(bounds.Shape, "_resolve",
                        lambda self, ref: resolve(self, ref) if ref.startswith("#") else {})
    host_file = tmp_path / "x.json"
    host_file.write_text('{"type": "string"}')
    for ref in (f"{server.url}/admin", host_file.as_uri(), "ftp://127.0.0.1/x"):
        with pytest.raises(InvalidArgument, match="is not fetched"):
            compile_schema({"properties": {"p": {"$ref": "#/definitions/x"}},
                            "definitions": {"x": {"$ref": ref}}})
    assert server.requests == []


# -- 9. no schema stalls the broker ----------------------------------------------------------

async def test_a_backtracking_pattern_in_a_tool_schema_does_not_stall(dk: Kernel) -> None:
    other = await prober(dk)
    pid = dk.spawn("agent", caps=["tool:ts:register"])
    await register(dk, pid, "evil", {"type": "object", "properties": {"s": {"pattern": EVIL}}},
                   LENGTH)
    for text, fits in (("a" * 28 + "!", False), ("a" * 200_000 + "!", False),
                       ("a" * 200_000, True)):
        outcome, worst = await worst_latency_while(
            dk, other, lambda text=text: dk.call_tool(pid, "evil", {"s": text}))
        assert worst < LATENCY_BOUND, (len(text), worst)
        if fits:
            assert outcome == len(text)  # the tool ran, with the whole text
        else:
            assert isinstance(outcome, InvalidArgument)
            assert "must match pattern" in outcome.message
    refused = [r for r in dk.audit(pid) if r["syscall"] == "tool.call"
               and r["detail"].get("error") == "INVALID_ARGUMENT"]
    assert len(refused) == 2


async def test_a_backtracking_pattern_in_an_object_type_does_not_stall(kernel: Kernel) -> None:
    other = await prober(kernel)
    await kernel.register_image(AgentImage(
        "writer", tools=("put_object", "get_object"), needs=("obj:*:read,write",),
        types={"word": {"type": "string", "pattern": EVIL},
               "tagged": {"type": "object", "patternProperties": {EVIL: {"type": "integer"}}}}))
    pid = kernel.spawn("writer", caps=["obj:*:read,write"])
    cases = [("word", "a" * 28 + "!", False), ("word", "a" * 200_000 + "!", False),
             ("word", "a" * 200_000, True),
             ("tagged", {"a" * 28 + "!": "not checked: the key does not match"}, True),
             ("tagged", {"a" * 100_000: "x"}, False)]
    for type_, value, fits in cases:
        outcome, worst = await worst_latency_while(kernel, other, lambda t=type_, v=value: (
            kernel.call_tool(pid, "put_object", {"name": "o", "type": t, "value": v})))
        assert worst < LATENCY_BOUND, (type_, worst)
        assert isinstance(outcome, InvalidArgument) is not fits, (type_, outcome)
        if fits:
            got = await kernel.call_tool(pid, "get_object", {"name": "o"})
            assert got["value"] == value
    rejected = [r for r in kernel.audit(pid) if r["syscall"] == "obj.put"
                and r["detail"].get("error") == "INVALID_ARGUMENT"]
    assert len(rejected) == 3


async def test_a_backtracking_answer_schema_does_not_stall_the_answer(kernel: Kernel) -> None:
    other = await prober(kernel)
    await open_image(kernel, needs=("human:*:ask",), tools=(*ALL_BUILTINS, "ask_human"))
    pid = kernel.spawn("agent", caps=["human:operator:ask"])
    schema = {"type": "string", "pattern": SENTENCE_PATTERN}
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(
            pid, "ask_human", {"question": "In one sentence?", "schema": schema}))
        [request] = await _pending(kernel)
        sentence = "We ship it next Monday."  # 23 characters: about 1 s for Python `re`

        async def answer(text: str) -> Any:
            return kernel.answer(request["id"], text)

        outcome, worst = await worst_latency_while(kernel, other, lambda: answer(sentence))
        assert worst < LATENCY_BOUND, worst
        assert isinstance(outcome, InvalidArgument)  # the period does not fit
        long_one = "word " * 40_000 + "."
        outcome, worst = await worst_latency_while(kernel, other, lambda: answer(long_one))
        assert worst < LATENCY_BOUND, worst
        assert isinstance(outcome, InvalidArgument)
        outcome, worst = await worst_latency_while(kernel, other,
                                                   lambda: answer(sentence.rstrip(".")))
        assert worst < LATENCY_BOUND, worst
        assert outcome["state"] == "approved"
    assert results == [sentence.rstrip(".")]
    rejected = [r for r in kernel.audit() if r["detail"].get("request") == request["id"]
                and r["phase"] == "rejected"]
    assert len(rejected) == 2


# RE2 is linear in the text, times its program: a pattern whose DFA outgrows its memory runs
# on the NFA, a step per instruction per byte. `.{1,1000}` is 9000 instructions: 15 s a MB.
NFA = "(?:.{1,1000})x$"
# Compiling a pattern takes milliseconds for a large program (this one: 13 000 instructions).
BIG_PATTERN = "(?:[a-zA-Z0-9_]{1,100}[^x]{1,100}){1,10}"


async def test_a_pattern_that_runs_on_re2s_nfa_does_not_stall(kernel: Kernel) -> None:
    other = await prober(kernel)
    await kernel.register_image(AgentImage(
        "writer", tools=("put_object", "get_object"), needs=("obj:*:read,write",),
        types={"line": {"type": "string", "pattern": NFA},
               "patterns": {"type": "array", "items": {"type": "string", "format": "regex"}}}))
    pid = kernel.spawn("writer", caps=["obj:*:read,write"])
    outcome, worst = await worst_latency_while(kernel, other, lambda: kernel.call_tool(
        pid, "put_object", {"name": "o", "type": "line", "value": "a" * 300_000}))
    assert worst < LATENCY_BOUND, worst  # 4.5 s before reading a pattern cost its program
    assert isinstance(outcome, LimitExceeded) and "steps" in outcome.message
    # Every value of `format: regex` is compiled: 2000 large ones took 10 s.
    with pytest.raises(LimitExceeded, match="steps"):
        await kernel.call_tool(pid, "put_object", {"name": "p", "type": "patterns",
                                                   "value": [BIG_PATTERN] * 2000})
    refused = [r["detail"]["error"] for r in outcomes(kernel, pid, "obj.put")]
    assert refused == ["LIMIT_EXCEEDED", "LIMIT_EXCEEDED"]
    # the neighbours: a short line is checked (and fits), a few patterns are checked
    await kernel.call_tool(pid, "put_object", {"name": "o", "type": "line",
                                               "value": "a" * 50 + "x"})
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "put_object", {"name": "o", "type": "line", "value": "a"})
    await kernel.call_tool(pid, "put_object", {"name": "p", "type": "patterns",
                                               "value": [BIG_PATTERN, "^a+$"]})
    with pytest.raises(InvalidArgument, match="valid regex"):
        await kernel.call_tool(pid, "put_object", {"name": "p", "type": "patterns",
                                                   "value": ["(a)\\1"]})


async def test_an_answer_schema_with_large_patterns_is_refused_at_once(kernel: Kernel) -> None:
    """128 large patterns took 0.6 s to compile (each twice), for every question asked with a
    new schema; their programs are bounded in all, and each is compiled once."""
    await open_image(kernel, needs=("human:*:ask",), tools=(*ALL_BUILTINS, "ask_human"))
    pid = kernel.spawn("agent", caps=["human:operator:ask"])
    other = await prober(kernel)
    schema = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": f"{BIG_PATTERN}{i}"} for i in range(128)}}
    with trio.fail_after(10):  # an accepted schema would wait for an answer
        outcome, worst = await worst_latency_while(kernel, other, lambda: kernel.call_tool(
            pid, "ask_human", {"question": "n?", "schema": schema}))
    assert worst < LATENCY_BOUND, worst
    assert isinstance(outcome, InvalidArgument) and "RE2 instructions" in outcome.message
    assert outcomes(kernel, pid, "human.ask")[-1]["detail"]["error"] == "INVALID_ARGUMENT"
    assert kernel.approvals(state=None) == []  # nobody was asked
    # the neighbour: a few large patterns are fine, and the answer is checked by them
    results: list[Any] = []
    schema = {"type": "string", "pattern": f"^{BIG_PATTERN}$"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(
            pid, "ask_human", {"question": "word?", "schema": schema}))
        [request] = await _pending(kernel)
        with pytest.raises(InvalidArgument):
            kernel.answer(request["id"], "x" * 300)
        kernel.answer(request["id"], "ab")
    assert results == ["ab"]


async def test_refs_that_multiply_are_refused_before_they_run(dk: Kernel) -> None:
    """A chain of definitions each referring to the next twice costs 2^n per value."""
    pid = dk.spawn("agent", caps=["tool:ts:register"])
    chain = {f"d{i}": {"anyOf": [{"$ref": f"#/definitions/d{i + 1}"}] * 2} for i in range(30)}
    chain["d30"] = {"type": "string"}
    for schema in ({"definitions": chain, "$ref": "#/definitions/d0"},
                   {"definitions": {"a": {"anyOf": [{"$ref": "#/definitions/a"}]}},
                    "$ref": "#/definitions/a"}):
        with trio.fail_after(5), pytest.raises(InvalidArgument):
            await register(dk, pid, "chain", schema)
    assert outcomes(dk, pid, "tool.register")[-1]["detail"]["error"] == "INVALID_ARGUMENT"
    # A tree that recurses through its values is fine, to a bounded depth.
    tree = {"definitions": {"node": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/definitions/node"}}}}},
        "$ref": "#/definitions/node"}
    await register(dk, pid, "tree", tree)
    value: dict[str, Any] = {}
    for _ in range(10):
        value = {"kids": [value, {}]}
    assert await dk.call_tool(pid, "tree", value) == value


# -- validation never changes what the caller passed --------------------------------------------

async def test_defaults_are_not_filled_into_the_callers_arguments(dk: Kernel) -> None:
    pid = dk.spawn("agent", caps=["tool:ts:register"])
    await register(dk, pid, "echo", {"type": "object", "properties": {
        "mode": {"type": "string", "default": "fast"},
        "opts": {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}}}})
    args: dict[str, Any] = {"opts": {}}
    assert await dk.call_tool(pid, "echo", args) == {"opts": {}}  # the tool ran with them
    assert args == {"opts": {}}
    # (a call with no effect of its own is one record, its intent with its outcome)
    [intent] = [r for r in dk.audit(pid) if r["syscall"] == "tool.call"
                and r["phase"] in ("intent", "intent+outcome") and r["resource"] == "echo"]
    assert intent["args_hash"] == args_hash({"name": "echo", "args": {"opts": {}}})
    assert intent["detail"]["args"] == {"name": "echo", "args": {"opts": {}}}


# -- the compiler's own bounds and semantics -----------------------------------------------------

def test_patterns_re2_cannot_run_are_refused() -> None:
    for pattern in ("(?=a)", "(a)\\1", "(?<!x)y", "a" * 2000):
        with pytest.raises(InvalidArgument, match="pattern"):
            compile_schema({"pattern": pattern})
        with pytest.raises(InvalidArgument, match="pattern"):
            compile_schema({"patternProperties": {pattern: {}}})
    # `format: regex` checks a value with RE2 too.
    regex = compile_schema({"format": "regex"})
    regex.check("^[a-z]+$", "v")
    with pytest.raises(InvalidArgument, match="valid regex"):
        regex.check("(?=a)", "v")


def test_dollar_means_the_end_and_unicode_classes_work() -> None:
    end = compile_schema({"pattern": "^a$"})
    end.check("a", "v")
    with pytest.raises(InvalidArgument):
        end.check("a\n", "v")  # as fastjsonschema means it (it rewrites `$` to `\\Z`)
    compile_schema({"pattern": r"^\pL+$"}).check("héllo", "v")


def test_size_depth_and_work_are_bounded() -> None:
    with pytest.raises(InvalidArgument, match="larger than"):
        compile_schema({"enum": ["x" * 1000] * 100})
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"properties": {"a": deep}}
    with pytest.raises(InvalidArgument, match="nested deeper"):
        compile_schema(deep)
    with pytest.raises(InvalidArgument, match="more than 128 patterns"):
        compile_schema({"anyOf": [{"pattern": f"^{i}$"} for i in range(200)]})
    wide = {"properties": {f"p{i}": {"type": "integer", "minimum": i} for i in range(1000)}}
    with pytest.raises(InvalidArgument, match="characters of code"):
        compile_schema(wide)
    shared = {"definitions": {"x": {"enum": list(range(50))}},
              "anyOf": [{"$ref": "#/definitions/x"}] * (MAX_VISITS // 40)}
    with pytest.raises(InvalidArgument, match="subschemas to one value"):
        compile_schema(shared)
    with pytest.raises(InvalidArgument, match="plain JSON"):
        compile_schema({"const": float("nan")})


def test_work_that_grows_with_the_value_is_cut_off() -> None:
    """Within every static bound, many subschemas over a big value would still be a long
    check (100 patterns tried on each of 100 000 strings took 76 s here); the generated code
    counts its steps and stops."""
    tried = compile_schema({"type": "array", "items": {
        "type": "string", "anyOf": [{"pattern": f"^x{i}$"} for i in range(100)] + [{}]}})
    with pytest.raises(LimitExceeded, match="steps"):
        tried.check(["a" * 100] * 100_000, "v")
    tried.check(["a" * 100] * 200, "v")  # a neighbour of ordinary size passes
    with pytest.raises(InvalidArgument):
        tried.check(["a" * 100] * 200 + [5], "v")  # and is still checked
    ints = compile_schema({"type": "array", "items": {"type": "integer"}})
    ints.check(list(range(100_000)), "v")  # a big value with a plain schema is fine


# Comparing with an `enum` or `const` walks nested values element by element (fastjsonschema
# unrolls the comparison into code), and `uniqueItems` copies every item all the way down:
# work that grows with the whole value, not with the length of the lists a check applies to.
# Each 1-item row below holds 1000 numbers; before these counted, 3000 rows cost 12 000 steps
# and seconds of the broker's thread (15 000 rows: 15 s, within every bound).
ROW = [[0] * 1000]
NEAR_ROW = [[0] * 999 + [1]]
DEEP_WORK = {
    "enum": {"type": "array", "items": {"enum": [NEAR_ROW, ROW]}},
    "const": {"type": "array", "items": {"const": ROW}},
    "uniqueItems": {"type": "array", "uniqueItems": True},
}


@pytest.mark.parametrize("keyword", sorted(DEEP_WORK))
def test_work_inside_nested_values_is_counted(keyword: str) -> None:
    schema = compile_schema(DEEP_WORK[keyword])
    rows = [[[i, *ROW[0]]] for i in range(3000)] if keyword == "uniqueItems" else [ROW] * 3000
    with pytest.raises(LimitExceeded, match="steps"):
        schema.check(rows, "v")
    schema.check(rows[:100], "v")  # an ordinary value still passes ...
    with pytest.raises(InvalidArgument):  # ... and is still checked
        schema.check([*rows[:100], rows[0] if keyword == "uniqueItems" else [[1] * 1000]], "v")


async def test_an_object_type_that_compares_nested_values_is_bounded(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage(
        "writer", tools=("put_object", "get_object"), needs=("obj:*:read,write",),
        types={"rows": DEEP_WORK["enum"]}))
    pid = kernel.spawn("writer", caps=["obj:*:read,write"])
    with pytest.raises(LimitExceeded, match="steps"):
        await kernel.call_tool(pid, "put_object", {"name": "o", "type": "rows",
                                                   "value": [ROW] * 3000})
    refused = [r for r in kernel.audit(pid) if r["syscall"] == "obj.put"
               and r["phase"] == "outcome"]
    assert [r["detail"]["error"] for r in refused] == ["LIMIT_EXCEEDED"]
    # a neighbour of ordinary size is stored, and read back whole
    await kernel.call_tool(pid, "put_object", {"name": "o", "type": "rows", "value": [ROW] * 10})
    assert (await kernel.call_tool(pid, "get_object", {"name": "o"}))["value"] == [ROW] * 10


def test_compiled_schemas_are_cached_and_never_touch_the_given_schema() -> None:
    schema = {"properties": {"a": {"$ref": "#/definitions/a"}}, "definitions": {"a": {}}}
    before = json.dumps(schema, sort_keys=True)
    first = compile_schema(schema)
    assert json.dumps(schema, sort_keys=True) == before  # refs not rewritten in place
    assert compile_schema(json.loads(before)) is first  # same canonical JSON, same validator


FORMAT_SAMPLES = {
    "email": ["a@b.co", "a.b@c.d", ".a@b.co", "a.@b.co", "a..b@c.d", "a@b", "@b.co", "a@@b.c",
              "a b@c.d", "x@y..z", "a@b.c\n"],
    "idn-hostname": ["ab.cd", "xn--ab.cd", "a.b", "-a.b", "a.-b", "a.xn---b", "a.b.co",
                     "a.b-c.de", "a" * 70 + ".b", "a." + "b" * 51, "a_b.c"],
    "duration": ["P1D", "PT1H", "P1Y2M3DT4H5M6S", "P", "PT", "P1W", "P1Y1W", "P1DT", "P1M",
                 "PT1M2S", "P1D\n", "P1.5D"],
    "ipv6": ["::", "1::2", "1:2:3:4:5:6:7:8", "1::2:3:4:5:6:7", "::ffff:1.2.3.4", "1:::2",
             "12345::", "1:2:3:4:5:6:7:8:9"],
}


@pytest.mark.parametrize("name", sorted(FORMAT_SAMPLES))
def test_formats_in_re2_agree_with_fastjsonschema(name: str) -> None:
    """The format regexes rewritten for RE2 accept exactly what fastjsonschema's accept."""
    import re

    from fastjsonschema.draft2019 import CodeGeneratorDraft2019

    python = re.compile(CodeGeneratorDraft2019.FORMAT_REGEXS[name])
    ours = compile_schema({"format": name})
    assert name in RE2_FORMATS or name == "ipv6"
    for sample in FORMAT_SAMPLES[name]:
        try:
            ours.check(sample, "v")
            accepted = True
        except InvalidArgument:
            accepted = False
        assert accepted == bool(python.match(sample)), (name, sample)
    if name == "idn-hostname":  # RE2's `$` is the end: no final newline slips through
        with pytest.raises(InvalidArgument):
            ours.check("a.b\n", "v")


ODD_VALUES = [None, True, 10**400, float("inf"), b"bytes", (1, 2), {1, 2}, {b"k": 1}, {1: 2},
              object(), "\ud800", [[[[[]]]]], {"a": b"x", "b": [[1], [1]], "zz": 0.3}]


def test_any_value_gets_a_typed_answer() -> None:
    """Whatever a caller passes (msgpack's bytes and odd keys, the API's Python objects),
    checking it ends in a pass or InvalidArgument, never another exception."""
    schema = compile_schema({
        "type": "object", "properties": {"a": {"pattern": "x", "format": "email"}},
        "patternProperties": {"^b": {"uniqueItems": True}},
        "additionalProperties": {"multipleOf": 0.1}, "propertyNames": {"pattern": "^[a-z]+$"},
        "anyOf": [{"required": ["a"]}, {"const": {"b": "q\"}{x}\\"}}]})
    for value in ODD_VALUES:
        try:
            schema.check(value, "v")
        except InvalidArgument as exc:
            assert exc.message.startswith("v: ")
    with pytest.raises(InvalidArgument, match=r"must be same as const definition: a\"b"):
        compile_schema({"const": 'a"b'}).check("x", "v")
