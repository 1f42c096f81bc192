"""`record_hash` writes its fields itself; it must give the bytes `canonical_json` gives for the
same list, whatever a field holds (a stored row may hold anything an editor put there): any
difference is a record that does not verify, or two records with one hash. Values that take
every branch of the field writer and those that leave it: bools beside ints, int and float
and str subclasses with their own `repr`/`str`, huge ints, NaN, infinities, -0.0, bytes (by
`repr`), tuples, nested maps, lone surrogates, line and paragraph separators, NUL."""

from __future__ import annotations

import enum
import hashlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.store.audit import AuditRecord, canonical_json, record_hash


class _Small(enum.IntEnum):
    ONE = 1


class _Float(float):
    def __repr__(self) -> str:
        return "not a float"


class _Str(str):
    def __str__(self) -> str:
        return "not this"


_ODD = [_Small.ONE, _Float(1.5), _Float("nan"), _Str("x"), -0.0, 0.0, 2**64, -(2**63), (1, "a"),
        "\ud800", "\u2028\u2029\x7f\x00\x1f", "é", 10**300, 1e308, 5e-324]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
                     st.binary(max_size=8), st.sampled_from(_ODD))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)


def _outcome(make: Any) -> Any:
    try:
        return make()
    except Exception as exc:  # the same failure both ways (a lone surrogate, say)
        return type(exc)


# 400 examples of 12 fields each: every branch many times over (1500 took half a minute).
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_VALUES, min_size=12, max_size=12))
def test_record_hash_is_sha256_of_canonical_json(fields: list[Any]) -> None:
    seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail, prev = fields
    record = AuditRecord(phase=phase, syscall=syscall, pid=pid, inv=inv, tool=tool,
                         resource=resource, args_hash=args_hash, cap_id=cap_id)
    ours = _outcome(lambda: record_hash(seq, ts, record, detail, prev))
    canonical = _outcome(lambda: hashlib.sha256(canonical_json(fields).encode()).hexdigest())
    assert ours == canonical
