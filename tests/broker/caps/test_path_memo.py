"""`normalize` remembers the canonical paths it worked out lately (`paths._seen`): what it
answers from there must be what it would work out again, for each root apart, and the memory
stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.caps import VirtualPath, normalize, paths
from broker.errors import InvalidArgument, NotCapable


@pytest.fixture(autouse=True)
def forgotten() -> Iterator[None]:
    paths._seen.clear()
    yield
    paths._seen.clear()


def test_a_path_seen_again_gets_the_same_answer_for_its_own_root_only() -> None:
    first = normalize("/data/a.txt", root="/p1")
    assert first == VirtualPath(("p1", "data", "a.txt"))
    assert normalize("/data/a.txt", root="/p1") is first  # remembered
    # Another root, the same text: its own answer, never the first root's.
    assert normalize("/data/a.txt", root="/p2") == VirtualPath(("p2", "data", "a.txt"))
    assert normalize("/data/a.txt") == VirtualPath(("data", "a.txt"))
    assert normalize("/data/a.txt", root="/p1", cwd="/p1/data") is first  # (cwd: unused)


def test_only_canonical_paths_are_remembered_and_refusals_never() -> None:
    assert normalize("/x/./y", root="/p") == VirtualPath(("p", "x", "y"))
    assert normalize("/x/", root="/p") == VirtualPath(("p", "x"), want_dir=True)
    assert paths._seen == {}
    for _ in range(2):  # the second time too: nothing remembered lets it through
        with pytest.raises(NotCapable):
            normalize("/../etc/passwd", root="/p")
        with pytest.raises(InvalidArgument):
            normalize("/a\x00b", root="/p")
    assert paths._seen == {}


def test_a_str_subclass_is_normalised_as_its_plain_text_not_looked_up() -> None:
    class Lying(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    normalize("/data/a.txt", root="/p")
    assert normalize(Lying("/other/b.txt"), root="/p") == VirtualPath(("p", "other", "b.txt"))


def test_the_memory_is_bounded() -> None:
    long = "/" + "d" * paths.SEEN_MAX_PATH
    assert normalize(long).parts == ("d" * paths.SEEN_MAX_PATH,)
    assert paths._seen == {}  # too long to keep
    for i in range(paths.SEEN_MAX_ENTRIES + 10):
        assert normalize(f"/f{i}") == VirtualPath((f"f{i}",))
        assert len(paths._seen) <= paths.SEEN_MAX_ENTRIES
