"""The scope pattern language: `matches` (does a scope cover a resource) and `is_subscope`
(is one scope inside another). Attenuation rests on `is_subscope` never saying yes wrongly."""

from __future__ import annotations

import pytest

from broker.caps.scope import is_subscope, matches, validate_scope
from broker.errors import InvalidArgument


@pytest.mark.parametrize(("scope", "resource", "expected"), [
    # exact
    ("/data/report.txt", "/data/report.txt", True),
    ("/data/report.txt", "/data/report.txt2", False),
    ("/data/report.txt", "/data/report.tx", False),
    ("/data/report.txt", "/data/report.txt/x", False),
    ("team", "team", True),
    ("team", "teams", False),
    ("word_count", "word_count", True),
    # a subtree covers its directory and everything below, and nothing beside it
    ("/data/**", "/data", True),
    ("/data/**", "/data/", True),
    ("/data/**", "/data/a", True),
    ("/data/**", "/data/a/b/c", True),
    ("/data/**", "/database", False),
    ("/data/**", "/data.bak/x", False),
    ("/data/**", "/dat", False),
    ("/data/**", "/", False),
    ("/data/**", "data/x", False),
    ("/data/**", "/other/data/x", False),
    # the whole tree: every absolute path, but no name that is not a path
    ("/**", "/", True),
    ("/**", "/etc/passwd", True),
    ("/**", "team", False),
    ("/**", "", False),
    # a trailing * is a name prefix (which does not stop at "/")
    ("team*", "team", True),
    ("team*", "teamX", True),
    ("team*", "team/x", True),
    ("team*", "/team/x", False),
    ("team.*", "team.a", True),
    ("team.*", "team", False),
    ("team.*", "teamXa", False),
    ("/data*", "/database", True),
    # * alone: everything, paths and names alike
    ("*", "anything", True),
    ("*", "/etc/passwd", True),
    ("*", "", True),
    # a * anywhere but the end is an ordinary character
    ("/d*ta/x", "/data/x", False),
    ("/d*ta/x", "/d*ta/x", True),
    ("a*b", "axxb", False),
    ("a*b", "a*b", True),
])
def test_matches(scope: str, resource: str, expected: bool) -> None:
    assert matches(scope, resource) is expected


@pytest.mark.parametrize(("inner", "outer", "expected"), [
    # identical scopes
    ("/data/**", "/data/**", True),
    ("team*", "team*", True),
    ("team", "team", True),
    ("*", "*", True),
    ("/**", "/**", True),
    # exact inside patterns
    ("/data/x", "/data/**", True),
    ("/data", "/data/**", True),
    ("/database", "/data/**", False),
    ("team.a", "team.*", True),
    ("team", "team.*", False),
    ("/etc/passwd", "*", True),
    ("team", "/**", False),
    # exact vs exact
    ("/data/x", "/data/y", False),
    ("/data/x", "/data/x/", False),
    # a pattern is never inside an exact scope (even its own text without the star)
    ("/data/**", "/data", False),
    ("team*", "team", False),
    ("*", "team", False),
    # subtrees
    ("/data/sub/**", "/data/**", True),
    ("/data/**", "/data/sub/**", False),
    ("/database/**", "/data/**", False),
    ("/data/**", "/database/**", False),
    ("/data/**", "/**", True),
    ("/**", "/data/**", False),
    # name patterns vs subtrees: "team*" matches "teamX", which /team/** never covers
    ("team*", "/team/**", False),
    ("/team*", "/team/**", False),
    ("/team/**", "team*", False),
    ("/team/**", "/team*", True),
    ("/team/**", "/te*", True),
    ("/team/**", "/team/*", False),  # /team/** covers "/team" itself; /team/* does not
    ("/team/x/**", "/team/*", True),
    ("/data*", "/data/**", False),   # would cover /database
    ("/data/**", "/data*", True),
    # everything
    ("/**", "*", True),
    ("team*", "*", True),
    ("*", "/**", False),
    ("*", "team*", False),
    ("/**", "/*", True),
    ("*", "/*", False),
    # name prefixes
    ("team.a*", "team.*", True),
    ("team*", "team.*", False),
    ("team.*", "team*", True),
    ("tea*", "team*", False),
])
def test_is_subscope(inner: str, outer: str, expected: bool) -> None:
    assert is_subscope(inner, outer) is expected


@pytest.mark.parametrize(("inner", "outer"), [
    ("/data/sub/**", "/data/**"), ("/data/**", "/data*"), ("team.a*", "team*"),
    ("/x/y", "/x/**"), ("/**", "*"), ("team.b", "team.*"),
])
def test_subscope_is_sound_on_samples(inner: str, outer: str) -> None:
    """Whenever `is_subscope` says yes, every sample the inner scope covers is covered by
    the outer one (the direction that would be an escalation if wrong)."""
    assert is_subscope(inner, outer)
    samples = ["/", "/data", "/data/", "/data/sub", "/data/sub/x", "/database", "/data.bak",
               "/x", "/x/y", "/x/y/z", "team", "team.a", "team.a.b", "team.b", "teamX",
               "/team", "/team/x", "", "*", "/etc/passwd"]
    for resource in samples:
        if matches(inner, resource):
            assert matches(outer, resource), (inner, outer, resource)


@pytest.mark.parametrize("scope", ["", "a\x00b", "/" + "x" * 5000, None, 5, b"/data/**"])
def test_invalid_scopes(scope: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_scope(scope)  # type: ignore[arg-type]
