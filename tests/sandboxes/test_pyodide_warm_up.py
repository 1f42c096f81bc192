"""A Pyodide sandbox warms its paths before it says hello (`warmUp` in
ts-runtime/pyodide/host.ts): the frames of a trivial tool of the runtime's own (load, check,
call) go through the very handling a registration's and a first call's frames do, so a spare's
first registration check and first call do not pay for V8 compiling it (the frames' decoding,
Pyodide's parser, compiler and call path, the answers' encoding). Nothing else shows whether
that warm-up worked (a failed one only makes the first check and call slower, which no test
times), so the host says on stderr when it fails, and this reads the whole of a sandbox's
stderr. Its answers are kept in the host, never written: the channel holds the hello alone."""

from __future__ import annotations

import pytest
import trio

from broker import Kernel
from sandboxes.pyodide import PyodideSandbox, pyodide_available
from tests.sandboxes.conftest import LIMITS, agent, run_tool

pytestmark = pytest.mark.skipif(not pyodide_available(),
                                reason="Pyodide is not installed: run `libos setup`")


async def test_the_warm_up_checks_and_calls_its_tool_without_a_failure() -> None:
    async with PyodideSandbox(spares=0, memory_mb=LIMITS.memory_mb) as pyodide:
        sb = await pyodide._start(LIMITS.memory_mb)
        assert sb.ready.is_set() and not sb.dead
        await trio.sleep(0.2)
        assert sb.idle_ok()  # nothing after the hello: no warm-up answer reached the channel
        stdin = sb.process.stdin
        assert stdin is not None
        await stdin.aclose()  # the host leaves; its stderr is then read to the end
        with trio.fail_after(30):
            await sb.gone.wait()
        assert sb.process.returncode == 0
        stderr = bytes(sb.stderr_tail).decode(errors="replace")
        assert "warm-up" not in stderr, stderr


LOADED = """
def run(args, libos):
    import _libos_runtime
    return sorted(_libos_runtime._tools)
"""


async def test_the_warm_up_leaves_no_tool_a_frame_or_a_tool_could_reach(pk: Kernel) -> None:
    """The warm-up's tool is taken out of the Python side once its frames are answered (its
    removal's failure would be silent): the first real tool finds itself alone."""
    assert await run_tool(pk, agent(pk), LOADED, lang="python") == ["t"]
