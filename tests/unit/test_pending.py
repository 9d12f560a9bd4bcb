"""The join state: each label joins at most once, nothing grows without bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from riverbed.streams.pending import PendingEvent, PendingStore, Prediction


def event(i: int, t: int) -> PendingEvent:
    return PendingEvent(f"e{i}", (Prediction("m", {"a": float(i)}, True, {}, 0),), t, t)


ops = st.lists(st.tuples(st.sampled_from(["event", "label", "expire"]), st.integers(0, 15),
                         st.integers(0, 50)), max_size=80)


@given(ops)
def test_each_event_joins_at_most_once_and_bounds_hold(operations: list) -> None:
    store = PendingStore(ttl_ms=100, max_entries=8)
    now, joined, seen_events = 0, [], set()
    for op, i, dt in operations:
        now += dt
        if op == "event" and i not in seen_events:
            seen_events.add(i)
            early = store.add_event(event(i, now))
            if early is not None:
                joined.append(early.event_id)
        elif op == "label":
            entry = store.add_label(f"e{i}", True, now, now)
            if entry is not None:
                joined.append(entry.event_id)
        elif op == "expire":
            store.expire(now)
        assert len(store.events) <= 8 and len(store.labels) <= 8
    assert len(joined) == len(set(joined))  # a label joins once
    assert all(int(j[1:]) in seen_events for j in joined)


def test_label_before_event_joins_when_the_event_arrives() -> None:
    store = PendingStore(ttl_ms=100, max_entries=10)
    assert store.add_label("e1", True, 0, 0) is None
    early = store.add_event(event(1, 5))
    assert early is not None and early.label is True and not store.events


def test_expiry_and_eviction_are_counted() -> None:
    store = PendingStore(ttl_ms=10, max_entries=2)
    for i in range(3):
        store.add_event(event(i, i))
    assert store.counters.evicted == 1 and list(store.events) == ["e1", "e2"]
    expired, _ = store.expire(now_ms=12)
    assert [e.event_id for e in expired] == ["e1", "e2"] and store.counters.expired_events == 2
    store.add_label("x", 1, 0, 0)
    store.add_label("x", 1, 0, 0)
    assert store.counters.duplicate_labels == 1
