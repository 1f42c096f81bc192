"""A record's hash is the sha256 of its fields as canonical JSON, and stays so: chains written
by earlier versions verify. Fixed vectors (made by the version before `record_hash` wrote the
fields itself), and the same bytes as `canonical_json` for any field value a stored record may
hold (an edited row can hold anything)."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from broker.store.audit import AuditRecord, canonical_json, record_hash

ODD: list[Any] = [None, 0, -5, 10**30, 2**63, 1.5, -0.0, 1e-300, float("nan"), float("inf"),
                  -float("inf"), True, False, "x", 'é\u2028"\\\n\x00', [1, {"b": 2, "a": 1}],
                  {"z": 1, "a": [None]}]


def test_fixed_vectors() -> None:
    record = AuditRecord(phase="outcome", syscall="fs.read", pid=3, inv=17, tool="read_file",
                         resource='/data/a "b".txt', args_hash="ab" * 32)
    assert record_hash(42, 1733112345.125, record, '{"ok":true,"result":"h\u00e9llo\\n"}',
                       "cd" * 32) == (
        "fdc893ae490dbd9e3f151cd15c760bff98067639f43fa69cf7d07394a66416ce")
    assert record_hash(1, 7, AuditRecord(phase="admin", syscall="audit.anchor"), "{}",
                       "0" * 64) == (
        "964a91890601716f1735d05add5dcec81082501b23f07f99ada8cc4644ef3b9b")


@pytest.mark.parametrize(("a", "b"), list(itertools.product(ODD, repeat=2)))
def test_the_hash_is_of_canonical_json_whatever_the_fields_hold(a: Any, b: Any) -> None:
    record = AuditRecord(phase=a, syscall=b, pid=a, inv=b, tool=a, resource=b, args_hash=a,
                         cap_id=b)
    body = canonical_json([a, b, a, b, a, a, b, b, a, b, a, b])
    assert record_hash(a, b, record, a, b) == hashlib.sha256(body.encode()).hexdigest()


def test_text_that_is_not_unicode_fails_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        record_hash(1, 1.0, AuditRecord(phase="intent", syscall="x", resource="\ud800"), "{}",
                    "0" * 64)


def test_a_time_hashed_again_is_written_as_itself() -> None:
    """`record_hash` keeps the text of the last time it wrote (an intent and its outcome share
    one): whichever time comes next, equal or not, the same object or not, each record's hash
    is the canonical one."""
    record = AuditRecord(phase="intent", syscall="fs.read", pid=1, detail={})
    times = [1.5, 1.5, float("1.5"), 2.25, 1.5, 1e22, 1e22, 0.1 + 0.2]
    for seq, ts in enumerate(times * 2, 1):
        fields = [seq, ts, 1, None, None, "intent", "fs.read", None, None, None, "{}", "p"]
        want = hashlib.sha256(canonical_json(fields).encode()).hexdigest()
        assert record_hash(seq, ts, record, "{}", "p") == want


@pytest.mark.parametrize("args", [{}, dict[str, Any](), {"a": None}, [], None, "", 0])
def test_arguments_hash_as_their_canonical_json(args: Any) -> None:
    """No arguments (an empty map: its hash is known beforehand) hash as any others do."""
    from broker.store.audit import args_hash

    assert args_hash(args) == hashlib.sha256(canonical_json(args).encode()).hexdigest()
