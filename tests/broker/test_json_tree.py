"""`json_tree.rebuild` and `copy_tree`: what `copy.deepcopy` and a recursive re-encoding gave,
without their recursion."""

from __future__ import annotations

import copy
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.json_tree import copy_tree, rebuild

_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=4)
_trees = st.recursive(_leaves, lambda c: st.lists(c, max_size=3) | st.tuples(c, c)
                      | st.dictionaries(st.text(max_size=3) | st.integers(), c, max_size=3))


@given(_trees)
def test_a_copy_is_deepcopys(tree: Any) -> None:
    copied = copy_tree(tree)
    assert copied == copy.deepcopy(tree) and repr(copied) == repr(copy.deepcopy(tree))


def test_a_copy_shares_no_container_and_copies_a_bytearray() -> None:
    inner, buf = {"a": [1]}, bytearray(b"x")
    tree = [inner, (inner, buf)]
    copied = copy_tree(tree)
    copied[0]["a"].append(2)
    copied[1][1][0:1] = b"y"
    assert tree == [{"a": [1]}, ({"a": [1]}, bytearray(b"x"))]
    assert type(copied[1]) is tuple


def test_keys_made_alike_keep_the_later_as_a_dict_display_does() -> None:
    tree = {1: "int", "1": "text", "k": (1, [2])}
    assert rebuild(tree, key=str, tuples=False) == {
        str(k): v for k, v in {1: "int", "1": "text", "k": [1, [2]]}.items()}


def test_far_past_the_recursion_limit() -> None:
    depth = sys.getrecursionlimit() * 3
    tree: Any = "x"
    for _ in range(depth):
        tree = (tree,)
    copied, levels = copy_tree(tree), 0
    while isinstance(copied, tuple):
        copied, levels = copied[0], levels + 1
    assert (copied, levels) == ("x", depth)
