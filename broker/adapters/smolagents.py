"""smolagents: a `PythonExecutor` that runs a `CodeAgent`'s code in libos's Pyodide sandbox
under a process's capabilities (`pip install 'libos[smolagents]'`, and `libos setup`).

    image = AgentImage("coder", tools=("send_email", code_tool()), needs=[...])
    async with ToolGate.open(kernel, pid, who="smolagents") as gate:
        agent = CodeAgent(tools=smolagents_tools(gate), model=model,
                          executor=LibosPythonExecutor(gate))
        result = await run_sync(agent.run, "...")

Each code step the agent's model writes is one call of the process's `python_code` tool (the
runner below, a Python tool in Pyodide, inside Deno with no permission): the step is
checked, bounded (the kernel's call limits: deadline, memory, syscalls, output) and audited
like any tool call. Inside, the agent's tools are functions that make libos tool calls
(`libos.tools.call`): each is checked against the process's capabilities, approved and
audited on its own, and its typed error is a Python exception in the agent's code (its
message names the code) that the model sees as the step's error, while the run goes on. A
request for a person waits in libos's approval queue (smolagents has no human-in-the-loop of
its own): `libos approve`, the web page or an approver answer it.

Variables persist from one step to the next in the runner's sandbox, which serves this
process's runner alone; a step the kernel kills (past its deadline, its memory) loses them,
and the model is told. `final_answer(x)` ends the run; outputs that are not plain data come
back as their `repr`. `smolagents_tools(gate)` describes the process's tools to the agent
(their names, descriptions and inputs, for its prompt); called on the host (by a
`ToolCallingAgent`, or smolagents' own local executor) each is a libos tool call too.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from smolagents import Tool
from smolagents.local_python_executor import CodeOutput, PythonExecutor

from broker.adapters.gate import Asked, Done, ToolGate

CODE_TOOL = "python_code"
MAX_VARIABLES = 1 << 20  # characters of JSON handed to a step with `send_variables`

RUNNER = r'''
import ast
import contextlib
import io
import json

MAX_LOGS = 50_000
_namespace = {}  # the agent's variables from step to step (this sandbox serves this runner only)


class _FinalAnswer(BaseException):  # not an Exception: the agent's `except Exception` passes it
    def __init__(self, value):
        self.value = value


def _final_answer(answer=None):
    raise _FinalAnswer(answer)


def _tool(libos, name):
    def call(*args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], dict):
            kwargs = args[0]
        elif args:
            raise TypeError(f"{name}() takes keyword arguments only")
        return libos.tools.call(name, kwargs)
    call.__name__ = name
    return call


def _plain(value):
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def run(args, libos):
    namespace = _namespace
    namespace.update(args.get("variables") or {})
    for name in args["tools"]:
        namespace[name] = _tool(libos, name)
    namespace["final_answer"] = _final_answer
    logs = io.StringIO()
    result = {"output": None, "final": False}
    try:
        with contextlib.redirect_stdout(logs):
            tree = ast.parse(args["code"], "<agent code>")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<agent code>", "exec"), namespace)
            if last is not None:
                expression = ast.Expression(last.value)
                result["output"] = eval(compile(expression, "<agent code>", "eval"), namespace)
    except _FinalAnswer as final:
        result = {"output": final.value, "final": True}
    except Exception as exc:
        code = getattr(exc, "code", None)
        kind = f"{type(exc).__name__} ({code})" if isinstance(code, str) else type(exc).__name__
        result = {"error": f"{kind}: {exc}"}
    result["output"] = _plain(result.get("output"))
    result["logs"] = logs.getvalue()[-MAX_LOGS:]
    return result
'''

RUNNER_SCHEMA = {
    "type": "object", "required": ["code", "tools"], "additionalProperties": False,
    "properties": {"code": {"type": "string"},
                   "tools": {"type": "array", "items": {"type": "string"}},
                   "variables": {"type": "object"}}}


def code_tool(name: str = CODE_TOOL) -> dict[str, Any]:
    """The runner, as an image's tool: list it in the image whose process runs the agent."""
    return {"name": name, "lang": "python", "source": RUNNER, "schema": RUNNER_SCHEMA,
            "description": "Run a smolagents CodeAgent's code step."}


class CodeStepFailed(Exception):
    """A code step that failed: the error (typed code included) and the step's logs, which
    smolagents shows the model."""


class LibosPythonExecutor(PythonExecutor):
    """Runs each code step as one call of the process's runner tool."""

    def __init__(self, gate: ToolGate, *, tool: str = CODE_TOOL) -> None:
        self.gate = gate
        self.tool = tool
        self.tools: list[str] = []
        self.variables: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    def send_tools(self, tools: dict[str, Any]) -> None:
        """Bind the agent's tools that are tools of the process; `final_answer` is the
        runner's own. Another tool (a Python object of the host) is not reachable from the
        sandbox: calling it is a `NameError` the model sees."""
        listed = {t["name"] for t in self.gate.blocking_sync(self.gate.tools)}
        self.tools = sorted(name for name in tools if name in listed and name != self.tool)

    def send_variables(self, variables: dict[str, Any]) -> None:
        plain = {k: v for k, v in variables.items() if _is_plain(v)}
        if len(json.dumps(plain, default=str)) > MAX_VARIABLES:
            raise CodeStepFailed(f"variables larger than {MAX_VARIABLES} characters of JSON")
        self.variables.update(plain)

    def __call__(self, code_action: str) -> CodeOutput:
        key = f"smolagents-{uuid.uuid4().hex}"
        args = {"code": code_action, "tools": self.tools, "variables": self.variables}
        outcome = self.gate.blocking(self.gate.start, key, self.tool, args)
        while isinstance(outcome, Asked):  # no human-in-the-loop here: libos's queue answers
            outcome = self.gate.blocking(self.gate.follow, key)
        self.variables = {}
        assert isinstance(outcome, Done)
        if not outcome.ok:  # the step itself was refused or killed (deadline, memory, ...)
            raise CodeStepFailed(json.dumps(outcome.error, ensure_ascii=False))
        value = outcome.value
        if "error" in value:
            logs = value.get("logs") or ""
            raise CodeStepFailed(f"{logs}\n{value['error']}" if logs else value["error"])
        return CodeOutput(output=value["output"], logs=value["logs"],
                          is_final_answer=bool(value["final"]))


def _is_plain(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


_TYPES = {"string", "boolean", "integer", "number", "array", "object", "null"}


def _inputs(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    required = set(schema.get("required") or ())
    inputs = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        entry: dict[str, Any] = {
            "type": kind if isinstance(kind, str) and kind in _TYPES else "any",
            "description": str(prop.get("description", name)) if isinstance(prop, dict)
            else name}
        if name not in required:
            entry["nullable"] = True
        inputs[name] = entry
    return inputs


class LibosSmolTool(Tool):
    """One tool of the gate's process, as smolagents describes and calls it."""

    skip_forward_signature_validation = True
    output_type = "any"

    def __init__(self, gate: ToolGate, listed: dict[str, Any]) -> None:
        self.gate = gate
        self.name = listed["name"]
        self.description = listed["description"] or listed["name"]
        self.inputs = _inputs(listed["schema"] or {})
        super().__init__()

    def forward(self, **kwargs: Any) -> Any:
        key = f"smolagents-{uuid.uuid4().hex}"
        args = {k: v for k, v in kwargs.items() if v is not None or k not in self.inputs
                or not self.inputs[k].get("nullable")}
        outcome = self.gate.blocking(self.gate.start, key, self.name, args)
        while isinstance(outcome, Asked):
            outcome = self.gate.blocking(self.gate.follow, key)
        assert isinstance(outcome, Done)
        if not outcome.ok:
            raise CodeStepFailed(json.dumps(outcome.error, ensure_ascii=False))
        return outcome.value


def smolagents_tools(gate: ToolGate, *, runner: str = CODE_TOOL) -> list[Tool]:
    """The process's tools (its table when called, the runner left out) for `CodeAgent`."""
    return [LibosSmolTool(gate, t) for t in gate.tools() if t["name"] != runner]
