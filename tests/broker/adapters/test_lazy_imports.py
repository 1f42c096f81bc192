"""Each adapter is an optional extra, imported only when used: libos itself, the gate, and
each adapter import no framework but their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("pydantic_ai", "agents", "langchain_core", "langgraph", "smolagents")
OWN = {"broker.adapters.pydantic_ai": {"pydantic_ai"},
       "broker.adapters.openai_agents": {"agents"},
       "broker.adapters.langchain": {"langchain_core"},
       "broker.adapters.smolagents": {"smolagents"}}


def loaded_after(module: str) -> set[str]:
    code = (f"import sys, json, broker, {module}; "
            f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout))


def test_libos_and_the_gate_import_no_framework() -> None:
    assert loaded_after("broker.adapters.gate") == set()


@pytest.mark.parametrize("module", sorted(OWN))
def test_an_adapter_imports_its_own_framework_only(module: str) -> None:
    loaded = loaded_after(module)
    assert OWN[module] <= loaded
    others = set(FRAMEWORKS) - OWN[module] - {"langgraph"}  # langchain may look for langgraph
    assert not loaded & others, loaded
