"""The conversation is bounded: a long run of big replies through the real SDKs keeps a
small checkpoint, a bounded stored conversation and bounded requests, and writes each turn
once (again only when it is elided). `bench/chat_bench.py` runs 1,000 steps."""

from __future__ import annotations

import pytest

from broker import Kernel
from broker.planner.chat import DEFAULT_MAX_CONTEXT, MAX_RESULT_CHARS
from tests.broker.planner.long_chat import long_chat
from tests.broker.planner.test_chat import KINDS

pytest.importorskip("openai")
pytest.importorskip("anthropic")

STEPS = 25


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBOS_TEST_KEY", "sk-test-key")


@pytest.mark.parametrize("kind", KINDS)
async def test_big_replies_keep_checkpoints_and_the_conversation_bounded(
        kernel: Kernel, kind: str) -> None:
    figures = await long_chat(kernel, kind, STEPS)
    assert (figures["status"]["exit_code"], figures["status"]["result"]) == (0, "done")
    assert figures["requests"] == STEPS + 1
    # The checkpoint holds no conversation: a few numbers, however long the run.
    assert figures["checkpoint_max_bytes"] < 2_000
    # One row per turn (the goal, then a reply and a result per step, up to the last step's
    # checkpoint), each written when it is added, and at most once more when it is elided
    # (dropping an old exchange, past max_context, deletes its rows: a long run's third).
    assert figures["conversation_rows"] == 2 * STEPS
    assert figures["most_writes_of_a_turn"] <= 2
    per_step = MAX_RESULT_CHARS + 2_000  # a reply's text is cut like a tool result
    assert figures["bytes_written"] < STEPS * per_step * 1.5
    # What is stored, and what each request carries, stays within max_context.
    overhead = 200 * (2 * STEPS + 2)  # elided turns leave a short placeholder
    assert figures["conversation_bytes"] < DEFAULT_MAX_CONTEXT + per_step + overhead
    assert figures["largest_request_bytes"] < DEFAULT_MAX_CONTEXT + 3 * per_step + overhead
