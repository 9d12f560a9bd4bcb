"""The registry client's memory: LRU bound, pins, expiring 404s; and the doctests of the
pure modules it belongs to."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riverbed.streams import codec, schema_cache
from riverbed.streams.errors import SchemaNotLoadedError
from riverbed.streams.schema_cache import BoundedLru, SchemaCache


@pytest.mark.parametrize("module", [schema_cache, codec])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_least_recently_used_goes_first() -> None:
    lru: BoundedLru[int, str] = BoundedLru(2)
    lru.put(1, "a")
    lru.put(2, "b")
    assert lru.get(1) == "a"  # 1 is now the most recent
    lru.put(3, "c")
    assert (1 in lru, 2 in lru, 3 in lru) == (True, False, True)


@given(st.lists(st.integers(0, 30), max_size=200), st.sets(st.integers(0, 30), max_size=8),
       st.integers(1, 10))
def test_the_bound_holds_except_for_pinned_entries(keys: list[int], pinned: set[int],
                                                   size: int) -> None:
    lru: BoundedLru[int, int] = BoundedLru(size)
    for done, key in enumerate(keys, 1):
        lru.put(key, key, pinned)
        assert all(p in lru for p in pinned & set(keys[:done]))  # never evicted
        assert len(lru) <= max(size, sum(1 for p in pinned if p in lru))


def test_pinned_ids_survive_until_the_next_pin() -> None:
    cache = SchemaCache(max_size=1, missing_ttl_s=1.0, clock=lambda: 0.0)
    cache.pin([1, 2, 3])
    for schema_id in (1, 2, 3):
        cache.put(schema_id, {"type": "record", "name": f"R{schema_id}", "fields": []})
    assert all(cache.lookup(i) is not None for i in (1, 2, 3))
    cache.pin([4])
    cache.put(4, "x")
    with pytest.raises(SchemaNotLoadedError):
        cache.lookup(1)


def test_a_missing_id_expires_but_keeps_answering_until_asked_again() -> None:
    now = [0.0]
    cache = SchemaCache(max_size=10, missing_ttl_s=5.0, clock=lambda: now[0])
    cache.put_missing(8)
    assert cache.wanted([8, 9]) == {9}
    now[0] = 5.0
    assert cache.wanted([8]) == {8}  # expired: the next prefetch asks the registry again
    assert cache.lookup(8) is None  # until then the batch still sees "no such id"
    cache.put(8, "found")
    assert cache.lookup(8) == "found" and cache.wanted([8]) == set()


def test_registered_ids_by_subject_and_schema() -> None:
    cache = SchemaCache(max_size=10, missing_ttl_s=5.0)
    cache.put_id("s", {"b": 1, "a": 2}, 3)
    assert cache.id_of("s", {"a": 2, "b": 1}) == 3  # key order does not matter
    assert cache.id_of("t", {"a": 2, "b": 1}) is None
