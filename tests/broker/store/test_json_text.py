"""`json_text.encoder` builds its C encoder once per thread, with cycle markers it keeps: its
text must be `json.JSONEncoder(...).encode`'s byte for byte, for any value (the record hash
and `args_hash` are made of it: any difference is a chain that no longer verifies), and what
that raises it must raise (a cycle, nesting too deep, a value JSON cannot hold)."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from broker.json_text import encoder
from broker.store.audit import canonical_json
from broker.store.connection import dump_json
from tests.broker.store.test_record_hash_fuzz import _VALUES, _outcome

_STANDARD = {
    "compact": (dump_json, json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode),
    "canonical": (canonical_json, json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode),
}


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_VALUES)
def test_the_text_is_the_standard_encoders(value: Any) -> None:
    for ours, standard in _STANDARD.values():
        assert _outcome(lambda e=ours: e(value)) == _outcome(lambda e=standard: e(value))


@pytest.mark.parametrize("kind", sorted(_STANDARD))
def test_a_cycle_is_a_value_error_and_later_values_are_unharmed(kind: str) -> None:
    ours, _ = _STANDARD[kind]
    cyclic: dict[str, Any] = {"a": [1]}
    cyclic["a"].append(cyclic)
    with pytest.raises(ValueError, match="Circular reference"):
        ours(cyclic)
    shared = [1]
    assert ours({"x": shared, "y": shared}) == '{"x":[1],"y":[1]}'  # not a cycle


@pytest.mark.parametrize("kind", sorted(_STANDARD))
def test_nesting_too_deep_is_a_recursion_error(kind: str) -> None:
    ours, _ = _STANDARD[kind]
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        ours(deep)


def test_what_json_cannot_hold_is_a_type_error_and_changes_nothing_after() -> None:
    with pytest.raises(TypeError):
        dump_json({"a": object()})
    assert dump_json({"a": 1}) == '{"a":1}'
    assert canonical_json({"b": object, "a": 1}).startswith('{"a":1,"b":"<class')


def test_without_the_c_accelerator_it_is_the_standard_encoder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import json_text
    monkeypatch.setattr(json_text, "_make_c_encoder", None)
    plain = encoder(sort_keys=True)
    assert plain({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'


@pytest.mark.parametrize("kind", sorted(_STANDARD))
def test_a_cycle_runs_the_values_own_code_no_more_than_the_standard_encoder(kind: str) -> None:
    """A cyclic value is refused after the value's own code (a dict subclass's `items`, as
    `sort_keys` and any non-dict mapping call it) ran as often as the standard encoder runs it:
    once. Without the cycle markers the C encoder goes round the cycle to the recursion limit
    first (each turn costing the whole container: a 100k-item list with itself in it took
    30 s instead of 0.02 s, holding the chain's lock), then the standard encoder again."""
    ours, standard = _STANDARD[kind]
    calls: list[str] = []

    class Counted(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            calls.append("items")
            return super().items()

    cyclic = Counted(a=1)
    cyclic["self"] = [cyclic]
    with pytest.raises(ValueError, match="Circular reference"):
        standard(cyclic)
    expected, calls[:] = len(calls), []
    with pytest.raises(ValueError, match="Circular reference"):
        ours(cyclic)
    assert len(calls) == expected


def test_a_value_written_again_from_its_own_code_and_from_other_threads_is_no_cycle() -> None:
    """The kept markers are the thread's, and a write from inside a value's own code (its
    `default`, here) does not share them: neither is taken for a cycle, and an error in the
    inner write leaves the outer one whole."""
    shared = {"list": list(range(50))}

    def inner(value: Any) -> Any:
        if isinstance(value, Bad):
            raise TypeError("not JSON")
        with contextlib.suppress(TypeError):
            write({"shared": shared, "bad": Bad()})  # fails part way, inside the outer write
        return write(shared)

    class Bad:
        pass

    write = encoder(default=inner)
    assert write([shared, object(), shared]) == json.dumps(
        [shared, dump_json(shared), shared], separators=(",", ":"))
    failures: list[BaseException] = []

    def many() -> None:
        try:
            for _ in range(300):
                assert dump_json([shared, shared]) == json.dumps([shared] * 2,
                                                                 separators=(",", ":"))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
