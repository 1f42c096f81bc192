// Makes the memory snapshot a Pyodide sandbox starts from (run by `libos setup`, with read and
// write access to the Pyodide directory only): Pyodide loaded, the modules the libos runtime
// and most tools use already imported. Restoring it takes a fraction of a second; loading
// Pyodide from scratch takes seconds.
import { PYTHON_EXECUTABLE, runtimeModule, SNAPSHOT } from "./host.ts";

const dir = Deno.args[0].replace(/\/+$/, "");
const toFileUrl = (path: string) => "file://" + path.split("/").map(encodeURIComponent).join("/");
// deno-lint-ignore no-explicit-any
const mod: any = await import(toFileUrl(`${dir}/pyodide.mjs`));
const py = await mod.loadPyodide({
  indexURL: `${dir}/`,
  packages: [],
  env: { HOME: "/home/pyodide" },
  _sysExecutable: PYTHON_EXECUTABLE,
  stdout: () => {},
  stderr: () => {},
  _makeSnapshot: true,
});
py.runPython(`
import ast, asyncio, base64, collections, dataclasses, datetime, decimal, fractions, functools
import hashlib, heapq, inspect, io, itertools, json, math, operator, random, re, statistics
import string, textwrap, time, traceback, types, typing, unicodedata
import pyodide.ffi
`);
// The libos runtime itself, and one registration check and tool compile (the interpreter's
// parser and compiler run once, so a sandbox's first call does not pay for their first use).
runtimeModule(py).destroy();
py.runPython(`
import _libos_runtime
_libos_runtime.check("async def run(args, libos):\\n    return {'n': len(args)}\\n", "warm-up")
compile("def run(args, libos):\\n    return [x for x in args]\\n", "<tool warm-up>", "exec")
`);
const snapshot: Uint8Array = py.makeMemorySnapshot();
Deno.writeFileSync(`${dir}/${SNAPSHOT}`, snapshot);
