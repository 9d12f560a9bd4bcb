"""The fold's dedup window against the reference it replaced: an OrderedDict capped at N."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from riverbed.streams.id_window import IdWindow

ids = st.lists(st.sampled_from([f"e{i}" for i in range(40)]), max_size=25)


def reference(size: int, batches: list[list[str]]) -> list[str]:
    """What the fold kept before IdWindow: OrderedDict.update, then popitem from the front."""
    window: OrderedDict[str, None] = OrderedDict()
    for batch in batches:
        window.update((i, None) for i in batch)
        while len(window) > size:
            window.popitem(last=False)
    return list(window)


@given(st.integers(1, 30), st.lists(ids, max_size=30))
def test_window_keeps_what_an_ordered_dict_capped_at_its_size_keeps(
        size: int, batches: list[list[str]]) -> None:
    window = IdWindow(size)
    for batch in batches:
        window.extend(batch)
        assert window.members == set(window)
        assert len(window) == len(window.members) <= size
    assert list(window) == reference(size, batches)


@given(st.integers(1, 30), ids, st.lists(ids, max_size=10))
def test_a_window_rebuilt_from_its_ids_continues_like_the_original(
        size: int, first: list[str], then: list[list[str]]) -> None:
    original = IdWindow(size, first)
    rebuilt = IdWindow(size, list(original))
    for batch in then:
        original.extend(batch)
        rebuilt.extend(batch)
    assert list(rebuilt) == list(original)


def test_the_members_set_is_updated_in_place() -> None:
    window = IdWindow(2)
    members = window.members  # what a batch holds for its dedup checks
    window.extend(["a", "b", "c"])
    assert members is window.members and members == {"b", "c"}


def test_doctests() -> None:
    import doctest

    from riverbed.streams import id_window

    result = doctest.testmod(id_window)
    assert result.attempted >= 1 and result.failed == 0
