"""The pending log's low-water mark: a rebuild that reads the log only from the mark
restores exactly the live pending store, whatever order events, labels, duplicates,
flushes, expiry and releases come in."""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from riverbed.agents.inference import BatchOutput
from riverbed.agents.labels import LabelJoin, pending_log_start
from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.features import LabelRule
from riverbed.streams.pending import Prediction

LABELS = AvroCodec(load_schema("label"))
TTL_MS = 1_000


@dataclasses.dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


async def _read(log: list[bytes], start: int) -> AsyncIterator[_Record]:
    for offset in range(start, len(log)):
        yield _Record("riverbed.pending", 0, offset, log[offset])


class _Lane:
    """What the join asks of a model's lane: has it learned this event already (the
    processor's dedup: the batch's ids and the fold's applied-id window)? It serves no
    model of these entries, so nothing is learned here; ``joined`` records the joins."""

    def __init__(self, joined: set[str]) -> None:
        self.model = types.SimpleNamespace(name="no-model")
        self.already_learned = joined.__contains__
        self.label_rule = LabelRule(
            "classification", binary=True, classes=None, label_type=int, max_classes=2,
            max_abs_value=1.0)


class _Run:
    """A live LabelJoin driven like the worker drives it, with its pending log."""

    def __init__(self, base: Settings) -> None:
        self.settings = dataclasses.replace(base, labels=dataclasses.replace(
            base.labels, ttl_s=TTL_MS / 1000))
        self.join = LabelJoin(self.settings)
        self.log: list[bytes] = []
        self.joined: set[str] = set()
        self.now = 1_000_000
        self.label_offset = 0
        self.marks: list[int] = []
        self.released: set[str] = set()
        self.lanes = [_Lane(self.joined)]

    def event(self, n: int) -> None:
        event_id = f"e{n}"
        early = event_id in self.join.store.labels  # its label came first: joined now
        made = [Prediction(f"m@p{n % 2}", {"x": float(n)}, 0, {0: 0.5, 1: 0.5}, 1)]
        self.join.hold(event_id, made, self.now - 5, self.lanes, BatchOutput(), self.now)
        if early:
            self.joined.add(event_id)

    def label(self, n: int) -> None:
        event_id = f"e{n}"
        pending = event_id in self.join.store.events and event_id not in self.joined
        self.label_offset += 1
        value = LABELS.encode({"event_id": event_id, "label": 1, "time": self.now})
        record = _Record(self.join.topic, n % 2, self.label_offset, value)
        self.join.on_label(record, self.lanes, BatchOutput(), self.now)
        if pending:  # joined (a duplicate label is dropped by the lane's dedup)
            self.joined.add(event_id)

    def flush(self) -> None:
        """End of a batch: expire, append the new entries to the log, note the mark."""
        out = BatchOutput()
        self.join.end_batch(out, self.now)
        if out.pending is not None:
            self.log.append(out.pending)
            self.join.appended(len(self.log) - 1, out.pending_ids)
        mark = self.join.low_water()
        assert mark is not None
        self.marks.append(mark)

    def release(self, partition: int) -> None:
        """Another worker takes ``partition`` over (it rebuilds those entries itself)."""
        self.released |= {e.event_id for e in self.join.store.events.values()
                          if e.predictions[0][0] == f"m@p{partition}"}
        self.released |= {label.event_id for label in self.join.store.labels.values()
                          if label.origin[1] == partition}
        self.join.release(partition, {f"m@p{partition}"})


async def _rebuilt(run: _Run, start: int) -> LabelJoin:
    fresh = LabelJoin(run.settings)
    await fresh.rebuild(_read(run.log, start), run.joined.__contains__, run.now, start=start)
    return fresh


operation = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 40)),
    st.tuples(st.just("label"), st.integers(0, 40)),
    st.tuples(st.just("flush"), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 600)),
    st.tuples(st.just("release"), st.integers(0, 1)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=80))
def test_rebuild_from_the_mark_restores_the_live_store(
    example_settings: Settings, operations: list[tuple[str, int]],
) -> None:
    run = _Run(example_settings)
    run.join._log_end = 0  # a fresh deployment: the worker's start-up rebuild read nothing
    seen_events: set[int] = set()
    for kind, n in operations:
        if kind == "event" and n not in seen_events:  # event ids are unique per stream
            seen_events.add(n)
            run.event(n)
        elif kind == "label":
            run.label(n)
        elif kind == "tick":
            run.now += n
        elif kind == "release":
            run.release(n)
        elif kind == "flush":
            run.flush()
    run.flush()
    fresh = asyncio.run(_rebuilt(run, run.marks[-1]))
    for rebuilt, live in ((fresh.store.events, run.join.store.events),
                          (fresh.store.labels, run.join.store.labels)):
        assert set(live) <= set(rebuilt)  # nothing live is lost by starting at the mark
        assert set(rebuilt) - set(live) <= run.released  # released entries: the new owner's
    assert run.marks == sorted(run.marks)  # the mark never moves back
    assert run.marks[-1] <= len(run.log)


def test_mark_skips_records_whose_entries_are_all_gone(example_settings: Settings) -> None:
    run = _Run(example_settings)
    run.join._log_end = 0
    for n in range(3):
        run.event(n)
    run.flush()  # record 0: e0 e1 e2
    run.event(3)
    run.flush()  # record 1: e3
    assert run.marks[-1] == 0
    for n in range(3):
        run.label(n)
    run.flush()
    assert run.marks[-1] == 1  # record 0 holds nothing live any more
    run.label(3)
    run.flush()
    assert run.marks[-1] == 2 == len(run.log)  # nothing live: the next record's offset
    fresh = asyncio.run(_rebuilt(run, run.marks[-1]))
    assert fresh.records_read == 0 and not fresh.store.events


def test_rebuild_starts_at_the_lowest_mark_of_its_learners(example_settings: Settings) -> None:
    @dataclasses.dataclass
    class _Fold:
        offsets: dict[str, int]

    source = LabelJoin(example_settings).log_source
    assert pending_log_start(source, [_Fold({source: 9}), _Fold({source: 4})]) == 4  # type: ignore[list-item]
    assert pending_log_start(source, [_Fold({source: 9}), _Fold({})]) == 0  # type: ignore[list-item]
    assert pending_log_start(source, []) == 0
