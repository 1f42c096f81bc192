"""`broker/lru.py`: least recently used first out, within a count and a byte bound."""

from __future__ import annotations

from broker.lru import Lru


def test_the_least_recently_used_go_first_within_both_bounds() -> None:
    gone: list[str] = []
    cache: Lru[str, bytes] = Lru(3, 10, len, lambda k, v: gone.append(k))
    cache["a"], cache["b"], cache["c"] = b"1111", b"22", b"33"
    assert cache.get("a") == b"1111"  # a use: "b" is now the oldest
    cache["d"] = b"4"
    assert gone == ["b"] and list(cache) == ["c", "a", "d"] and cache.nbytes == 7
    cache["e"] = b"5555"  # 11 bytes: the oldest ("c") goes
    assert gone == ["b", "c"] and cache.nbytes == 9
    cache["a"] = b"x"  # replaced: counted once, as the newest
    assert cache.nbytes == 6 and list(cache) == ["d", "e", "a"]


def test_a_value_over_the_byte_bound_is_not_kept_and_pop_is_not_an_eviction() -> None:
    gone: list[str] = []
    cache: Lru[str, bytes] = Lru(8, 4, len, lambda k, v: gone.append(k))
    cache["small"] = b"12"
    cache["huge"] = b"12345"
    assert "huge" not in cache and gone == ["huge"] and list(cache) == ["small"]
    assert cache.pop("small") == b"12" and cache.pop("small") is None
    assert gone == ["huge"] and cache.nbytes == 0 and len(cache) == 0
