"""The scopes offered for an `always` answer: narrowest first, each one the answer rule takes,
none wider than the asking capability, whatever the resource looks like."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.approvals.rules import check_answer
from broker.approvals.scopes import scope_choices
from broker.caps import CapSpec
from broker.errors import LibosError


def _row(kind: str, right: str, resource: str, asked: str) -> dict[str, object]:
    return {"id": "apr_x", "kind": "capability", "state": "pending",
            "deadline": time.time() + 60, "cap_kind": kind, "cap_right": right,
            "resource": resource, "cap_scope": asked}


@pytest.mark.parametrize(("kind", "right", "resource", "asked", "offered"), [
    ("fs", "write", "/out/sub/deep/a.txt", "/out/**",
     ["/out/sub/deep/a.txt", "/out/sub/deep/**", "/out/sub/**", "/out/**"]),
    ("fs", "write", "/out/a.txt", "/out/a.txt", ["/out/a.txt"]),
    ("fs", "read", "/a.txt", "/**", ["/a.txt", "/**"]),
    ("obj", "write", "team.notes.x", "team.*", ["team.notes.x", "team.notes.*", "team.*"]),
    ("email", "send", "ann@partner.com", "*@partner.com", ["ann@partner.com",
                                                           "*@partner.com"]),
])
def test_the_scopes_offered(kind: str, right: str, resource: str, asked: str,
                            offered: list[str]) -> None:
    assert scope_choices(_row(kind, right, resource, asked)) == offered


def test_a_question_or_a_resource_no_scope_can_hold_offers_none() -> None:
    assert scope_choices({"kind": "question", "cap_kind": None}) == []
    assert scope_choices(_row("fs", "write", "/out/" + "x" * 5000, "/out/**")) == ["/out/**"]


segment = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1,
                  max_size=6)


@given(st.lists(segment, min_size=1, max_size=5), st.integers(0, 5))
def test_every_offered_scope_is_taken_by_the_rule_and_within_what_was_asked(
        parts: list[str], depth: int) -> None:
    resource = "/" + "/".join(parts)
    asked = "/" + "/".join(parts[:min(depth, len(parts) - 1)]) + "/**"
    asked = asked.replace("//**", "/**")
    row = _row("fs", "write", resource, asked)
    offered = scope_choices(row)
    assert offered[-1] == asked
    if "*" not in resource:  # (a resource ending in `*` is a pattern when taken as a scope,
        assert offered[0] == resource  # one that may reach beyond it: not offered unchecked)
    for scope in offered:
        check_answer(row, "always", scope=scope, now=time.time())
        assert CapSpec("fs", scope, frozenset({"write"})).within(
            CapSpec("fs", asked, frozenset({"write"}), effect="ask"), answered=True)
    with pytest.raises(LibosError):  # and the rule refuses what is wider
        check_answer(row, "always", scope="/**" if asked != "/**" else "/", now=time.time())
