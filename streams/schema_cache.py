"""What a schema-registry client remembers: bounded, with answers of "no such id" that expire.

Pure bookkeeping, no I/O: the async client (:mod:`riverbed.streams.registry`) fills it,
the codec reads it synchronously on the hot path.

* Schemas by id, at most ``max_size`` (least recently used out first). A schema id never
  changes its schema in a Confluent-API registry, so a found schema needs no expiry.
* "No such id" (a 404), at most ``max_size`` of them, each believed for ``missing_ttl_s``:
  the next prefetch after that asks again (the schema may have been registered since).
  Until then the codec keeps seeing "missing", so a batch never changes its mind halfway.
* Pins: the ids of the latest prefetch are never evicted before the next prefetch, so
  every id a batch needs is still here when the batch is decoded, however many distinct
  ids it carries (the cache then holds more than ``max_size`` for a while).
* Ids of registered schemas by (subject, schema), at most ``max_size``.

>>> cache = SchemaCache(max_size=2, missing_ttl_s=10.0, clock=lambda: 0.0)
>>> cache.put(1, {"type": "record", "name": "A", "fields": []})
>>> cache.put_missing(2)
>>> sorted(cache.wanted([1, 2, 3]))
[3]
>>> cache.lookup(2) is None
True
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from riverbed.streams.errors import SchemaNotLoadedError

#: A writer schema as the registry returned it: JSON (a record is a mapping).
SchemaJson = Mapping[str, Any] | list[Any] | str

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """A mapping of at most ``max_size`` entries (plus pinned ones), least recently used
    out first. ``get`` counts as a use."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, pinned: Collection[K] = ()) -> None:
        """Store ``key``; evict the least recently used entries not in ``pinned``."""
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) <= self.max_size:
            return
        excess, victims = len(self._items) - self.max_size, list[K]()
        for old in self._items:  # oldest first; usually the first ones are not pinned
            if len(victims) == excess:
                break
            if old not in pinned:
                victims.append(old)
        for old in victims:
            del self._items[old]

    def pop(self, key: K) -> None:
        """Forget ``key`` (if held)."""
        self._items.pop(key, None)


class SchemaCache:
    """Schemas by id, expiring "no such id" answers and registered ids (module docstring)."""

    def __init__(self, max_size: int, missing_ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.missing_ttl_s = missing_ttl_s
        self._clock = clock
        self._schemas: BoundedLru[int, SchemaJson] = BoundedLru(max_size)
        #: schema id -> when its 404 stops being believed
        self._missing: BoundedLru[int, float] = BoundedLru(max_size)
        self._ids: BoundedLru[tuple[str, str], int] = BoundedLru(max_size)
        self._pinned: frozenset[int] = frozenset()

    def pin(self, ids: Iterable[int]) -> None:
        """Keep ``ids`` (and only them) from eviction until the next call."""
        self._pinned = frozenset(ids)

    def wanted(self, ids: Iterable[int]) -> set[int]:
        """The ids among ``ids`` the registry must be asked about: never answered, evicted,
        or answered "no such id" longer than ``missing_ttl_s`` ago."""
        now = self._clock()
        wanted = set()
        for schema_id in ids:
            if schema_id in self._schemas:
                continue
            until = self._missing.get(schema_id)
            if until is None or until <= now:
                wanted.add(schema_id)
        return wanted

    def put(self, schema_id: int, schema: SchemaJson) -> None:
        """The registry answered ``schema`` for ``schema_id``."""
        self._missing.pop(schema_id)
        self._schemas.put(schema_id, schema, self._pinned)

    def put_missing(self, schema_id: int) -> None:
        """The registry answered 404 for ``schema_id`` (believed for ``missing_ttl_s``)."""
        self._schemas.pop(schema_id)
        self._missing.put(schema_id, self._clock() + self.missing_ttl_s, self._pinned)

    def lookup(self, schema_id: int) -> SchemaJson | None:
        """The schema of ``schema_id``, None if the registry has no such id; raises
        :class:`SchemaNotLoadedError` if nobody asked the registry (a caller's bug)."""
        schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        if schema_id in self._missing:
            return None
        raise SchemaNotLoadedError(f"schema id {schema_id} was not prefetched before decoding")

    def put_id(self, subject: str, schema: Mapping[str, Any], schema_id: int) -> None:
        """``schema`` is registered under ``subject`` with ``schema_id``."""
        self._ids.put((subject, canonical(schema)), schema_id)

    def id_of(self, subject: str, schema: Mapping[str, Any]) -> int | None:
        """The id ``schema`` was registered with under ``subject``, if known."""
        return self._ids.get((subject, canonical(schema)))


def canonical(schema: Mapping[str, Any]) -> str:
    """One text per schema value (key order does not matter)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
