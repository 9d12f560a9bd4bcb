"""Pending predictions waiting for their label, and labels waiting for their event. Pure.

Memory cost: one pending event holds its feature dict (about 60 bytes per feature plus
~230 bytes of dict overhead), a prediction tuple per model (~150 bytes) and its key in two
dicts (~100 bytes): about **1 KiB for a 9-feature event and one model**, so the default
bound of 200,000 pending events costs ~200 MiB. Early labels cost ~200 bytes each.

Rules:
* a label for a pending event joins it (once: the entry is removed);
* a label for an unknown event is held for ``ttl_ms`` (the event may still come);
* entries older than ``ttl_ms`` expire; beyond ``max_entries`` the oldest is evicted;
* everything is counted.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, NamedTuple


class Prediction(NamedTuple):
    """What one model predicted for an event before learning from it."""

    model: str
    x: dict[str, float]
    prediction: Any
    proba: dict[Any, float]
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class PendingEvent:
    """What we need to learn and score an event once its label arrives."""

    event_id: str
    #: what each model predicted, before learning
    predictions: tuple[Prediction, ...]
    event_time: int
    added_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class EarlyLabel:
    """A label that arrived before its event."""

    event_id: str
    label: Any
    label_time: int
    added_ms: int
    #: original label record bytes and (topic, partition, offset), for the dead-letter topic
    raw: bytes = b""
    origin: tuple[str, int, int] = ("", 0, 0)


@dataclasses.dataclass
class PendingCounters:
    joined: int = 0
    early: int = 0
    early_joined: int = 0
    expired_events: int = 0
    expired_labels: int = 0
    evicted: int = 0
    duplicate_labels: int = 0


class PendingStore:
    """Bounded, TTL-expiring join state (insertion order == age order)."""

    def __init__(self, ttl_ms: int, max_entries: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_entries = max_entries
        self.events: OrderedDict[str, PendingEvent] = OrderedDict()
        self.labels: OrderedDict[str, EarlyLabel] = OrderedDict()
        self.counters = PendingCounters()

    def add_event(self, entry: PendingEvent) -> EarlyLabel | None:
        """Hold ``entry``; if its label already arrived, return that label instead."""
        early = self.labels.pop(entry.event_id, None)
        if early is not None:
            self.counters.early_joined += 1
            return early
        self.events[entry.event_id] = entry
        self.events.move_to_end(entry.event_id)
        while len(self.events) > self.max_entries:
            self.events.popitem(last=False)
            self.counters.evicted += 1
        return None

    def add_label(self, event_id: str, label: Any, label_time: int, now_ms: int,
                  raw: bytes = b"", origin: tuple[str, int, int] = ("", 0, 0),
                  ) -> PendingEvent | None:
        """The pending event ``label`` belongs to (removed), or None (label held for TTL)."""
        entry = self.events.pop(event_id, None)
        if entry is not None:
            self.counters.joined += 1
            return entry
        if event_id in self.labels:
            self.counters.duplicate_labels += 1
            return None
        self.labels[event_id] = EarlyLabel(event_id, label, label_time, now_ms, raw, origin)
        self.counters.early += 1
        while len(self.labels) > self.max_entries:
            self.labels.popitem(last=False)
            self.counters.evicted += 1
        return None

    def expire(self, now_ms: int) -> tuple[list[PendingEvent], list[EarlyLabel]]:
        """Remove and return entries older than the TTL."""
        limit = now_ms - self.ttl_ms
        events, labels = [], []
        while self.events:
            first = next(iter(self.events.values()))
            if first.added_ms > limit:
                break
            events.append(self.events.popitem(last=False)[1])
        while self.labels:
            first_label = next(iter(self.labels.values()))
            if first_label.added_ms > limit:
                break
            labels.append(self.labels.popitem(last=False)[1])
        self.counters.expired_events += len(events)
        self.counters.expired_labels += len(labels)
        return events, labels

    def sort_by_age(self) -> None:
        """Restore age order after entries were merged in (a rebuild or a takeover)."""
        self.events = OrderedDict(sorted(self.events.items(), key=lambda kv: kv[1].added_ms))
        self.labels = OrderedDict(sorted(self.labels.items(), key=lambda kv: kv[1].added_ms))
