"""Shell scopes: the variables a scope names, its argv pattern, deny rules as conditions, and
`is_subscope` never saying yes wrongly (checked against sampled commands)."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.caps import CapSpec
from broker.caps.shell_env import DEFAULT_ENV, check_env, command_resource, is_default
from broker.caps.shell_scope import ANY, is_subscope, matches, split
from broker.errors import InvalidArgument


def r(argv: str, **env: str) -> str:
    return command_resource(env, argv.split())


@pytest.mark.parametrize(("scope", "resource", "expected"), [
    ("git status", r("git status"), True),
    ("git status", r("git status", GIT_PAGER="cat"), False),
    ("git status", r("git status", TZ="UTC", LC_ALL="en_US.UTF-8", TERM="xterm-256color",
                     NO_COLOR="1", COLUMNS="80", LINES="24"), True),
    ("git status", r("git status", TZ="/etc/shadow"), False),
    ("git status *", r("git status --short", GIT_DIR="/x"), False),
    ("GIT_PAGER=* git status", r("git status", GIT_PAGER="less -R"), True),
    ("GIT_PAGER=* git status", r("git status"), True),
    ("GIT_PAGER=* git status", r("git status", GIT_PAGER="x", GIT_EDITOR="y"), False),
    ("GIT_PAGER=* git status", r("git log", GIT_PAGER="cat"), False),
    ("GIT_PAGER=cat git status", r("git status", GIT_PAGER="cat"), True),
    ("GIT_PAGER=cat git status", r("git status", GIT_PAGER="less"), False),
    ("'GIT_PAGER=less -R' git status", r("git status", GIT_PAGER="less -R"), True),
    ('"GIT_PAGER=less -R" git status', r("git status", GIT_PAGER="less -R"), True),
    ("GIT_PAGER=less git status", r("git status", GIT_PAGER="less -R"), False),
    ("'GIT_PAGER=*' git status", r("git status", GIT_PAGER="cat"), False),  # quoted: exact
    ("'GIT_PAGER=*' git status", r("git status", GIT_PAGER="*"), True),
    ("TZ=* date", r("date", TZ=":/etc/shadow"), True),  # named: any value
    ("A=* B=* *", r("anything at all", A="1", B="2"), True),
    ("A=* B=* *", r("anything", A="1", C="2"), False),
    ("*", r("rm -rf /"), True),
    ("*", r("echo", LD_PRELOAD="/evil.so"), False),  # no wildcard for names
    ("GIT_PAGER=*", r("git status", GIT_PAGER="cat"), False),  # names alone cover nothing
    ("GIT_PAGER=* GIT_PAGER=* git", r("git", GIT_PAGER="cat"), False),  # named twice
    ("GIT_PAGER=*\tgit", r("git", GIT_PAGER="cat"), False),
    ("X=a\\ b git", r("git", X="a b"), False),  # quoting other than shlex's ends the names
    (" *", r("git"), False),  # a leading space is part of the argv pattern
    ("GIT_PAGER=*  git", r("git", GIT_PAGER="cat"), True),
])
def test_allow_scopes(scope: str, resource: str, expected: bool) -> None:
    assert matches(scope, resource) is expected
    assert CapSpec("shell", scope, frozenset({"run"})).covers("shell", "run", resource) is expected


@pytest.mark.parametrize(("scope", "resource", "expected"), [
    ("git push *", r("git push origin"), True),
    ("git push *", r("git push origin", GIT_SSH_COMMAND="x", A="b"), True),
    ("git push *", r("git status", GIT_SSH_COMMAND="x"), False),
    ("GIT_SSH_COMMAND=* *", r("git fetch", GIT_SSH_COMMAND="x"), True),
    ("GIT_SSH_COMMAND=* *", r("git fetch"), False),
    ("GIT_SSH_COMMAND=evil *", r("git fetch", GIT_SSH_COMMAND="ssh"), False),
    ("TZ=* *", r("date", TZ="UTC"), True),  # a deny rule may name a default variable
])
def test_deny_rules_are_conditions(scope: str, resource: str, expected: bool) -> None:
    assert matches(scope, resource, deny=True) is expected
    rule = CapSpec("shell", scope, frozenset({"run"}), effect="deny")
    assert rule.covers("shell", "run", resource) is expected


@pytest.mark.parametrize(("inner", "outer", "expected"), [
    ("git status", "git status", True),
    ("git status", "git *", True),
    ("GIT_PAGER=cat git status", "GIT_PAGER=* git *", True),
    ("GIT_PAGER=* git status", "GIT_PAGER=* git *", True),
    ("GIT_PAGER=* git status", "GIT_PAGER=cat git *", False),
    ("GIT_PAGER=cat git status", "GIT_PAGER=less git *", False),
    ("GIT_PAGER=* git status", "git *", False),
    ("GIT_PAGER=* git status", "*", False),
    ("GIT_PAGER=* git *", "GIT_PAGER=* git status", False),
    ("TZ=UTC date", "date", True),  # a default value passes everywhere
    ("TZ=* date", "date", False),  # any TZ includes values that are not default
    ("TZ=/etc/shadow date", "date", False),
    ("A=* B=* x", "B=* A=* *", True),
    ("A=* x", "A=* B=* *", True),
    ("A=* B=* x", "A=* *", False),
    ("A=* A=* x", "A=* *", False),
])
def test_is_subscope(inner: str, outer: str, expected: bool) -> None:
    assert is_subscope(inner, outer) is expected
    spec = CapSpec("shell", inner, frozenset({"run"}))
    assert spec.within(CapSpec("shell", outer, frozenset({"run"}))) is expected


def test_split_reads_back_what_command_resource_wrote() -> None:
    env = {"B": "it's \"quoted\"\nand long " * 20, "A": "", "C": "*", "D": "$(x) `y`"}
    resource = command_resource(env, ["prog", "--x=1", "a b", "*"])
    assert split(resource) == split(str(resource)) == (env, "prog --x=1 'a b' '*'")
    assert split("GIT_PAGER=* git") == ({"GIT_PAGER": ANY}, "git")


@settings(max_examples=300, deadline=None)
@given(env=st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                           st.text(st.characters(exclude_characters="\x00"), max_size=20),
                           max_size=5),
       argv=st.lists(st.text(st.characters(exclude_characters="\x00"), max_size=10),
                     min_size=1, max_size=4).filter(lambda a: "=" not in a[0]))
def test_a_parsed_resource_has_the_parts_it_was_made_of(env: dict[str, str],
                                                         argv: list[str]) -> None:
    """What the audit or an approval row holds (plain text) reads back exactly as the
    command the syscall checked."""
    resource = command_resource(env, argv)
    assert split(str(resource)) == (resource.env, resource.argv) == (env, shlex.join(argv))


NAMES = st.sampled_from(["A", "B", "TZ", "GIT_PAGER"])
VALUES = st.sampled_from(["", "x", "a b", "*", "UTC", "/etc/shadow", "it's"])
ARGVS = st.sampled_from([["git"], ["git", "status"], ["git", "status", "-s"], ["date"],
                         ["*"]])
SCOPE_ARGV = st.sampled_from(["git", "git status", "git *", "git status *", "*", "date",
                              "'*'"])


@st.composite
def scopes(draw: st.DrawFn) -> str:
    named = draw(st.dictionaries(NAMES, st.one_of(st.none(), VALUES), max_size=3))
    words = [f"{n}=*" if v is None else command_resource({n: v}, []) for n, v in named.items()]
    return " ".join([*words, draw(SCOPE_ARGV)])


@settings(max_examples=400, deadline=None)
@given(inner=scopes(), outer=scopes(),
       commands=st.lists(st.tuples(st.dictionaries(NAMES, VALUES, max_size=3), ARGVS),
                         min_size=1, max_size=20))
def test_subscope_is_sound(inner: str, outer: str,
                           commands: list[tuple[dict[str, str], list[str]]]) -> None:
    """Whenever `is_subscope` says yes, every sampled command the inner scope allows is
    allowed by the outer one (the direction that would be an escalation if wrong)."""
    if not is_subscope(inner, outer):
        return
    for env, argv in commands:
        resource = command_resource(env, argv)
        if matches(inner, resource):
            assert matches(outer, resource), (inner, outer, resource)


def test_the_default_set_is_small_and_checked_by_value() -> None:
    assert set(DEFAULT_ENV) == {"LC_ALL", "LC_COLLATE", "LC_CTYPE", "LC_MESSAGES",
                                "LC_MONETARY", "LC_NUMERIC", "LC_TIME", "TZ", "TERM",
                                "NO_COLOR", "COLUMNS", "LINES"}
    for name, value in (("LC_ALL", "C"), ("LC_CTYPE", "sr_RS.UTF-8@latin"), ("TZ", "UTC"),
                        ("TZ", "America/Argentina/Buenos_Aires"), ("TZ", "EST5EDT,M3.2.0/2"),
                        ("TZ", "<+03>-3"), ("TERM", "xterm-256color"), ("COLUMNS", "120")):
        assert is_default(name, value), (name, value)
    for name, value in (("LC_ALL", "../x"), ("LC_ALL", "/tmp/x"), ("LC_ALL", ".x"),
                        ("TZ", ":UTC"), ("TZ", "/etc/shadow"), ("TZ", "Europe/../../etc/x"),
                        ("TZ", "Europe/.x"), ("TERM", "../x"), ("TERM", "a/b"),
                        ("COLUMNS", "-1"), ("LINES", "1e9"), ("NO_COLOR", "$(x)"),
                        ("PATH", "/usr/bin"), ("GIT_PAGER", "cat"), ("LANGUAGE", "en")):
        assert not is_default(name, value), (name, value)


@pytest.mark.parametrize("env", [None, [], {"A": 1}, {"A": "x\x00"}, {1: "x"}, {"A B": "x"},
                                 {"A=B": "x"}, {"é": "x"}])
def test_check_env_refuses_bad_shapes(env: object) -> None:
    with pytest.raises(InvalidArgument):
        check_env(env)
