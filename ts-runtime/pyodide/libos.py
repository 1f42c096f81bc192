"""The Python side of the libos Pyodide sandbox: the `libos` object a tool sees, and the call
driver that `host.ts` uses. It runs inside Pyodide, in a Deno process with no permission.

Nothing here has authority. `libos.<family>.<op>(...)` is built from the broker's syscall
table (handed over by host.ts from syscalls.gen.ts) and turns its arguments into one syscall
frame, which the broker checks, audits and performs. A syscall is a synchronous round trip
(host.ts writes the frame and reads stdin until the answer arrives), so a plain
`def run(args, libos)` simply gets the value; for an `async def run`, every wrapper returns an
awaitable that is already complete. Typed errors are Python exceptions with the wire codes of
broker/errors.py (`libos.NotCapable`, ... all subclasses of `libos.LibosError`).

One `libos` object is made per call and revoked when the call ends. Its syscalls carry that
call's own token (53 random bits from host.ts), refused once the call has ended, and no call
can name another: a `libos`, a token, a callback or a task a tool keeps gets `Cancelled` when
it acts after its call, whenever and through whatever it acts. Hooks that would run inside
later calls and see their frames (trace and profile functions, audit hooks) and the
collector's object graph are refused to tools.

What does not hold: that code a call leaves behind never acts in a later call's name. This
module, its classes and the interpreter's builtins are ordinary Python objects, as open to
tool code as anything else (a function's `__globals__`, a class's attributes, a frame's
locals): code planted there (a patched `Libos.__init__`, a replaced builtin, a changed global
of the tool's own module) runs inside the tool's later calls, finds their `libos` and token,
and can act in their name while they run, counted against their limits and audited under
their invocation. CPython cannot hide a running call's objects from code that call runs, and
a tool's module state is meant to persist between its calls; only a fresh interpreter per
call would close this. What bounds it: a sandbox process serves one tool of one authority
(sandboxes/pyodide.py), so whatever a tool leaves in the interpreter only ever meets that
tool's own later calls, with that tool's authority, and a token it learns dies with its call.

Because a syscall is a synchronous round trip, the syscalls of an `async def run` are made
one at a time, in the order they are called (asyncio.gather over syscalls does not overlap
them), and JavaScript timers wait while one is in flight.
"""

import ast
import asyncio
import inspect
import io
import json
import os
import sys
import traceback
import types

from _libos_errors import (  # generated from broker/errors.py (errors.gen.py)
    BROKER_ONLY,
    ERRORS,
    Cancelled,
    InvalidArgument,
    LibosError,
    NotFound,
    ProtocolError,
    ToolFailed,
)
from js import Object as _js_object  # (bound before any tool runs)
from pyodide.ffi import JsProxy, jsnull, to_js

MAX_MESSAGE = 4096
MAX_DEPTH = 64

errors = types.SimpleNamespace(**{cls.__name__: cls for cls in ERRORS.values()},
                               LibosError=LibosError, by_code=dict(ERRORS))


# -- values across the boundary ------------------------------------------------------------

def to_wire(value, what):
    """A Python value as the JS value host.ts encodes: None, bool, int, float, str, bytes,
    lists/tuples and dicts with str keys, at most MAX_DEPTH deep. Anything else is refused
    here, typed, before a frame exists. (None becomes JS null: to_js alone would make it
    undefined, which drops a key.)"""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # as it is (None arrives as undefined, which the host sends as nil)
    return to_js(_wire(value, 0, what), create_pyproxies=False, dict_converter=_from_entries)


def _wire(value, depth, what):
    if value is None:
        return jsnull
    if isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if depth >= MAX_DEPTH:
        raise InvalidArgument(f"{what} is nested deeper than {MAX_DEPTH}")
    if isinstance(value, (list, tuple)):
        return [_wire(item, depth + 1, what) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"{what}: dict keys must be str, not {type(key).__name__}")
            out[key] = _wire(item, depth + 1, what)
        return out
    raise InvalidArgument(f"{what}: a {type(value).__name__} cannot be sent")


def args_from_wire(value):
    """A call's arguments: JSON text (a str) where JSON carries them exactly, else decoded.
    The text is JSON.stringify's (no blanks around the value), so the C scanner alone parses
    it, without json.loads's whitespace matching (most of a small call's cost); anything it
    does not take whole goes to json.loads."""
    if type(value) is not str:
        return from_wire(value)
    try:
        args, end = _json_scan(value, 0)
    except StopIteration:
        end = -1
    return args if end == len(value) else _json_loads(value)


def from_wire(value):
    """A decoded frame value as plain Python: dict, list, str, int, float, bool, None, bytes."""
    if isinstance(value, JsProxy):
        value = value.to_py(default_converter=_keyed_object)
    return _plain(value)


def _keyed_object(value, convert, cache):
    """`to_py` takes a JS object for a dict only when its `constructor` is Object: a decoded
    map with a "constructor" key of its own (any text is a key on the wire) would stay a
    JsProxy. A plain object (Object.prototype's) is a dict all the same; anything else stays."""
    if _js_object.getPrototypeOf(value) != _js_object.prototype:
        return value
    result = {}
    cache(value, result)
    for key, item in value.as_object_map().items():
        result[key] = convert(item)
    return result


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, memoryview):
        return value.tobytes()
    if value is jsnull:
        return None
    return value


# Bound by init: host.ts's Object.fromEntries, maker of failure answers, syscall function.
_from_entries = _fail = _js_syscall = None
_json_loads = json.loads
_json_scan = json.decoder.JSONDecoder().scan_once


def _no_processes(*args, **kwargs):
    raise OSError(138, "emscripten does not support processes.")


# Emscripten's system() would reach for Node's process and fail inside Pyodide, which cannot
# recover from that: refuse it the way subprocess already is. (No process can be started
# anyway: Deno runs with --deny-run.) And keep the snapshot maker's path out of the
# environment a tool sees.
os.system = _no_processes
os.environ.pop("_", None)


# -- the libos object ----------------------------------------------------------------------

class _Call:
    """One call: its token (host.ts refuses any other) and whether it has ended here."""

    __slots__ = ("ended", "token")

    def __init__(self, token):
        self.token = token
        self.ended = False


class _Ready:
    """What a wrapper returns to an async tool: an awaitable that is already complete."""

    __slots__ = ("_error", "_value")

    def __init__(self, value, error):
        self._value = value
        self._error = error

    def __await__(self):
        if self._error is not None:
            raise self._error
        return self._value
        yield  # pragma: no cover - makes this a generator


def _syscall(call, name, args):
    if call.ended:
        raise Cancelled("the call this libos belongs to has ended")
    if not isinstance(name, str):
        raise InvalidArgument("syscall name must be a str")
    if not isinstance(args, dict):
        raise InvalidArgument(f"{name}: arguments must be a dict")
    answer = _js_syscall(call.token, name, to_wire(args, f"{name} arguments"))
    code = answer[0]
    if code is None:
        return from_wire(answer[1])
    cls = ERRORS.get(code, ProtocolError)
    raise cls(str(answer[1]))


class _Family:
    """One family of syscalls (`libos.fs`, `libos.obj`, ...), bound to one call."""

    def __init__(self, lib, family):
        self._lib = lib
        self._family = family

    def __getattr__(self, op):
        spec = _SPECS.get(self._family, {}).get(op)
        if spec is None:
            extra = _EXTRAS.get(self._family, {}).get(op)
            if extra is None:
                raise AttributeError(f"libos.{self._family} has no {op!r}")
            fn = types.MethodType(extra, self)
        else:
            fn = _wrapper(self._lib, *spec)
        setattr(self, op, fn)
        return fn

    def __dir__(self):
        return sorted({*_SPECS.get(self._family, {}), *_EXTRAS.get(self._family, {})})

    def __repr__(self):
        return f"<libos.{self._family}>"


def _wrapper(lib, name, params, required):
    def op(*values, **keywords):
        return lib._run(name, _bind(name, params, values, keywords))
    op.__name__ = name.split(".", 1)[1]
    op.__qualname__ = name
    op.__doc__ = f"{name}({', '.join(params)})"
    return op


def _bind(name, params, values, keywords):
    if len(values) > len(params):
        raise InvalidArgument(f"{name}: expected at most {len(params)} arguments, "
                              f"got {len(values)}")
    args = {}
    for pname, value in zip(params, values, strict=False):
        if value is not None:
            args[pname] = value
    for pname, value in keywords.items():
        if pname not in params:
            raise InvalidArgument(f"{name}: no argument {pname!r} (it takes {', '.join(params)})")
        if pname in args:
            raise InvalidArgument(f"{name}: argument {pname!r} given twice")
        if value is not None:
            args[pname] = value
    return args


def _read_text(self, path, offset=None, length=None, reason=None):
    """fs.read as text (UTF-8)."""
    return self.read(path, offset, length, False, reason)


def _read_bytes(self, path, offset=None, length=None, reason=None):
    """fs.read as bytes."""
    return self.read(path, offset, length, True, reason)


def _write_text(self, path, text, append=None, exclusive=None, reason=None):
    """fs.write of a str."""
    return self.write(path, str(text), append, exclusive, reason)


def _write_bytes(self, path, data, append=None, exclusive=None, reason=None):
    """fs.write of bytes."""
    return self.write(path, bytes(data), append, exclusive, reason)


_EXTRAS = {"fs": {"read_text": _read_text, "read_bytes": _read_bytes,
                  "write_text": _write_text, "write_bytes": _write_bytes}}
# Pythonic plurals for families named in the singular by the table.
_ALIASES = {"tools": "tool", "objects": "obj"}
_SPECS = {}


class Libos:
    """What a tool gets as `libos`: one attribute per syscall family of the broker's table
    (`libos.fs.read_text(path)`, `libos.obj.put(name, type, value)`, `libos.tools.call(name,
    args)`, `libos.clock.now()`, ...), `libos.syscall(name, args)` for any syscall by name, and
    the typed errors (`libos.NotCapable`, ..., `libos.errors`)."""

    LibosError = LibosError
    errors = errors

    def __init__(self, call, is_async):
        self._call = call
        self._async = is_async

    def _run(self, name, args):
        if not self._async:
            return _syscall(self._call, name, args)
        try:
            return _Ready(_syscall(self._call, name, args), None)
        except LibosError as exc:
            return _Ready(None, exc)

    def syscall(self, name, args=None):
        """Any syscall by name, with an arguments dict."""
        return self._run(name, {} if args is None else args)

    def __getattr__(self, family):
        real = _ALIASES.get(family, family)
        if real not in _SPECS:
            raise AttributeError(f"libos has no {family!r}")
        ns = _Family(self, real)
        setattr(self, family, ns)
        return ns

    def __dir__(self):
        return sorted({*_SPECS, *_ALIASES, "syscall", *ERRORS_BY_NAME, "errors", "LibosError"})

    def __repr__(self):
        return "<libos>"


ERRORS_BY_NAME = {cls.__name__: cls for cls in ERRORS.values()}
for _name, _cls in ERRORS_BY_NAME.items():  # libos.NotCapable, ...
    setattr(Libos, _name, _cls)
del _name, _cls


# -- tools ---------------------------------------------------------------------------------

_tools = {}


def check(source, name):
    """Registration: parse and compile (never run) a tool; say what it exports, and give its
    code object."""
    try:
        tree = ast.parse(source, filename=f"<tool {name}>")
        code = compile(tree, f"<tool {name}>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise InvalidArgument(f"tool {name}: {type(exc).__name__}: {exc.msg} "
                              f"(line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InvalidArgument(f"tool {name}: cannot be compiled: {type(exc).__name__}") from None
    entry = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run":
            entry = node
    if entry is None:
        raise InvalidArgument(f"tool {name} defines no top-level run(args, libos) function")
    a = entry.args
    positional = len(a.posonlyargs) + len(a.args)
    if positional < 2 and a.vararg is None:
        raise InvalidArgument(f"tool {name}: run must take (args, libos)")
    return {"entry": "run", "async": isinstance(entry, ast.AsyncFunctionDef)}, code


def load(name, source_hash, source):
    """A tool's module, executed on first call (errors are that call's)."""
    _tools[name] = (source_hash, source, None, None, False)


def check_loaded(name):
    """Check a loaded tool where it will run (compile, never run): its code waits for a call."""
    state = _Call(None)
    try:
        source_hash, source, *_ = _loaded(name)
        found, code = check(source, name)
        _tools[name] = (source_hash, source, code, None, False)
        return _result(state, found)
    except BaseException as exc:  # noqa: BLE001
        return _failure(state, exc)


def _loaded(name):
    if name not in _tools:
        raise NotFound(f"tool {name} is not loaded")
    return _tools[name]


def _module(name):
    """A tool's run function (its module executed on first use) and whether it is async."""
    source_hash, source, code, run, is_async = _loaded(name)
    if run is None:
        module = types.ModuleType(f"libos_tool_{len(_tools)}")
        module.__dict__["__builtins__"] = __builtins__
        if code is None:
            code = compile(source, f"<tool {name}>", "exec", dont_inherit=True)
        exec(code, module.__dict__)
        run = module.__dict__.get("run")
        if not callable(run):
            raise InvalidArgument(f"tool {name} defines no run function")
        is_async = inspect.iscoroutinefunction(run)
        _tools[name] = (source_hash, source, None, run, is_async)
    return run, is_async


_PLAIN = frozenset({type(None), bool, int, float, str, dict, list, tuple, bytes})


def caller(name):
    """`call` bound to one tool's name, which host.ts keeps per name: a warm call crosses
    into Python with a number and its arguments only (issue 17: the name, a string converted
    at every call, was a good part of a warm call's crossing)."""

    def call_tool(token, js_args):
        """One call, its syscalls made with `token` (its own): the result as the JS value to
        send, a failure (`_fail`: only host.ts makes one, no result is one), or a Promise of
        either. `js_args` None: no arguments (an empty dict, which host.ts does not send)."""
        state = _Call(token)
        try:
            # A warm call's path in as few steps as it takes (issue 17): the tool's run
            # function once its module has run, and no arguments without parsing them.
            found = _tools.get(name)
            run, is_async = _module(name) if found is None or found[3] is None else found[3:]
            value = run({} if js_args is None else args_from_wire(js_args),
                        Libos(state, is_async))
            if type(value) not in _PLAIN and inspect.isawaitable(value):  # plain data: no inspect
                return _finish_async(state, value)
            return _result(state, value)
        except BaseException as exc:  # noqa: BLE001 - every failure is the call's typed error
            return _failure(state, exc)

    return call_tool


def call(token, name, js_args):
    """One call of the tool `name` (see `caller`)."""
    return caller(name)(token, js_args)


def _finish_async(state, awaitable):
    async def go():
        try:
            value = await awaitable
        except BaseException as exc:  # noqa: BLE001
            return _failure(state, exc)
        return _result(state, value)

    return asyncio.ensure_future(go())


def _write_through_output():
    """sys.stdout and sys.stderr as text written straight to the descriptor, each write at
    once (host.ts splits lines): nothing waits in Python for a flush, so a call's end flushes
    only streams a tool put in their place. Flushing both at every call's end was a tenth of
    a warm no-op call's wall time (issue 17); a multi-argument print now crosses into
    JavaScript once per piece instead of once per line."""
    global _stdout, _stderr
    made = []
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        stream.flush()
        made.append(io.TextIOWrapper(io.FileIO(fd, "w", closefd=False),
                                     encoding=stream.encoding, errors=stream.errors,
                                     write_through=True))
    sys.stdout = sys.__stdout__ = _stdout = made[0]
    sys.stderr = sys.__stderr__ = _stderr = made[1]


_stdout = _stderr = None


def _flush():
    """Print output without a final newline is the call's too: out before the answer. Ours
    hold nothing (`_write_through_output`); a stream a tool put in their place may."""
    for stream, ours in ((sys.stdout, _stdout), (sys.stderr, _stderr)):
        if stream is not ours:
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a tool may have replaced or closed them
                pass


def _result(state, value):
    _flush()
    state.ended = True
    try:
        return to_wire(value, "the result")
    except InvalidArgument as exc:  # a result that is not plain data: the tool's own failure
        return _failure(state, ToolFailed(f"the result cannot be sent: {exc.message}"))
    except LibosError as exc:
        return _failure(state, exc)


def _failure(state, exc):
    _flush()
    state.ended = True
    code, message = describe(exc)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "…"
    return _fail(code, message)


_JS_LIMITS = ("allocat", "Out of memory", "call stack", "Invalid array buffer length",
              "Invalid typed array length", "Invalid string length")


def describe(exc):
    """A tool's exception as (wire code, message)."""
    if isinstance(exc, LibosError):
        code = exc.code if isinstance(exc.code, str) else repr(exc.code)
        if code in ERRORS and code not in BROKER_ONLY:
            return code, str(exc.message)
        # A code only the broker may give (the broker maps it again, whatever is sent).
        return "TOOL_FAILED", f"the tool failed claiming {code[:40]!r}: {exc.message}"
    if isinstance(exc, (MemoryError, RecursionError)):
        return "LIMIT_EXCEEDED", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "TOOL_FAILED", "the tool raised KeyboardInterrupt"
    if isinstance(exc, SystemExit):
        return "TOOL_FAILED", f"the tool called exit({exc.code!r})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith("<tool ")]
    where = "".join(traceback.format_list(frames[-3:])).rstrip()
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if type(exc).__name__ == "JsException":
        # Refusals by Deno's own sandbox, and JS allocations beyond the process's limit.
        if any(m in text for m in ("NotCapable", "PermissionDenied", "disallowed")):
            return "NOT_CAPABLE", text
        if "RangeError" in text and any(m in text for m in _JS_LIMITS):
            return "LIMIT_EXCEEDED", text
    return "TOOL_FAILED", f"{text}\n{where}" if where else text


def init(specs_json, codes_json, from_entries, fail, js_syscall):
    """Bind the JS side (table, codes, fromEntries, failures, syscalls); guard the interpreter."""
    global _fail, _from_entries, _js_syscall
    codes = json.loads(codes_json)
    if sorted(codes) != sorted(ERRORS):
        raise RuntimeError(f"error codes differ: {sorted(codes)} != {sorted(ERRORS)}")
    for spec in json.loads(specs_json):
        family, op = spec["name"].split(".", 1)
        _SPECS.setdefault(family, {})[op] = (spec["name"], tuple(spec["params"]),
                                             tuple(spec["required"]))
    _from_entries = from_entries
    _fail = fail
    _js_syscall = js_syscall
    module = types.ModuleType("libos")
    module.__doc__ = Libos.__doc__
    for cls in (LibosError, *ERRORS.values()):
        setattr(module, cls.__name__, cls)
    module.errors = errors
    sys.modules["libos"] = module
    _write_through_output()
    _refuse_hooks()


def _refuse_hooks():
    """Interpreter-wide hooks a tool may not install: each would run inside the calls that
    come after it and see their frames and objects (a trace or profile function, another
    audit hook), or hand out any object of the interpreter (the collector's object graph).
    One audit hook, added before any tool runs, refuses them. It keeps no reference a tool
    could reach and change (the events are a constant of its code), and any exception it
    raises refuses the event."""

    def audit(event, args):
        if event in {"sys.addaudithook", "sys.settrace", "sys.setprofile",
                     "sys.monitoring.register_callback", "sys._current_frames",
                     "sys._current_exceptions", "gc.get_objects", "gc.get_referrers",
                     "gc.get_referents"}:
            raise RuntimeError(f"{event} is not available to a libos tool")

    sys.addaudithook(audit)


def check_call(source, name):
    """The checker's answer for one tool, as `call` answers."""
    state = _Call(None)
    try:
        return _result(state, check(source, name)[0])
    except BaseException as exc:  # noqa: BLE001
        return _failure(state, exc)
