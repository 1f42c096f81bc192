"""Hypothesis strategies for wire values and messages, shared by the protocol tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from broker.errors import ERRORS
from broker.protocol import (
    ID_LIMIT,
    LOG_LEVELS,
    PROTOCOL_VERSION,
    SANDBOX_KINDS,
    Call,
    Cancel,
    CheckTool,
    Error,
    Hello,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
    WarmUp,
)

ids = st.integers(0, ID_LIMIT - 1)
texts = st.text(max_size=20)  # hypothesis' text never holds lone surrogates
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)  # NaN != NaN would defeat the equality checks
    | texts
    | st.binary(max_size=20)
)
# max_leaves bounds depth far below Limits.max_depth, and size far below every length limit.
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20,
)
maps = st.dictionaries(texts, values, max_size=5)
codes = st.sampled_from(sorted(ERRORS))

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.just(PROTOCOL_VERSION) | ids, st.sampled_from(sorted(SANDBOX_KINDS))),
    st.builds(LoadTool, texts, texts, texts, st.text()),
    st.builds(Call, ids, texts, values),
    st.builds(CheckTool, ids, texts),
    st.builds(Syscall, ids, ids, texts, maps),
    st.builds(SyscallResult.success, ids, ids, values),
    st.builds(
        lambda i, s, code, text: SyscallResult(i, s, False, None, code, text),
        ids,
        ids,
        codes,
        texts,
    ),
    st.builds(Result, ids, values),
    st.builds(Error, ids, codes, texts),
    st.builds(Log, ids, st.sampled_from(LOG_LEVELS), texts),
    st.builds(Cancel, ids),
    st.just(WarmUp()),
)
