"""The label join: labels that arrive after (or before) their event, learned once.

Unlabelled events are predicted at once; their features and predictions wait in a
:class:`~streams.pending.PendingStore`. A record on the labels topic (Avro ``Label``,
keyed and partitioned like the events, consumed by the same batch ingest) joins its
pending event: the model is scored with the prediction it made *when the event
arrived* (honest progressive validation with real delays) and then learns. Handled:
label before event (held for the TTL), duplicate labels (learned once: the history's
applied-id window), labels that never come (expire, counted), labels whose event never
comes (expire, dead-lettered as ``unknown_event_id``), and a bound on pending entries.

Delivery guarantee: exactly-once learning (through the learner's history protocol) and
a pending store that **survives restarts**: each batch's new pending entries are appended
to ``riverbed.pending`` after the batch's outputs are acknowledged and before its history
record and offsets; on start the store is rebuilt from that log, minus everything the
history shows as learned, minus what expired meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Collection
from typing import Any

from agents.inference import BatchOutput, InputRecord, dead_letter
from schemas import load_schema
from streams.codec import Decoder, make_codec
from streams.config import Settings
from streams.errors import DecodeError, ValidationError
from streams.features import validate_label
from streams.pending import EarlyLabel, PendingEvent, PendingStore
from streams.pending_codec import decode_pending, encode_pending
from streams.telemetry import TIMING_SAMPLE


class LabelJoin:
    """Join state and rules; called by the inference processor, one batch at a time."""

    def __init__(self, settings: Settings, registry: Any = None,
                 decoder: Decoder | None = None) -> None:
        self.topic = settings.topics.labels
        self.decoder = decoder or make_codec(load_schema("label"), f"{self.topic}-value", registry)
        self.store = PendingStore(int(settings.labels.ttl_s * 1000), settings.labels.max_pending)
        self._new_events: list[PendingEvent] = []
        self._new_labels: list[EarlyLabel] = []

    def hold(self, event_id: str, made: list[Any], event_time: int, lanes: list[Any],
             out: BatchOutput, now_ms: int) -> None:
        """An unlabelled event was predicted: wait for its label (or join an early one)."""
        entry = PendingEvent(event_id, tuple(made), event_time, now_ms)
        early = self.store.add_event(entry)
        if early is None:
            self._new_events.append(entry)
        else:
            self._learn(entry, early.label, early.label_time, lanes, out, None)

    def on_label(self, record: InputRecord, lanes: list[Any], out: BatchOutput,
                 now_ms: int) -> None:
        """A record from the labels topic."""
        try:
            label = self.decoder.decode(record.value or b"")
        except DecodeError as exc:
            out.dead_letters.append(dead_letter(record, exc.reason, str(exc), None))
            return
        event_id = label["event_id"]
        if any(lane.already_learned(event_id) for lane in lanes):
            self.store.counters.duplicate_labels += 1
            return
        entry = self.store.add_label(event_id, label["label"], label["time"], now_ms,
                                     raw=record.value or b"",
                                     origin=(record.topic, record.partition, record.offset))
        if entry is not None:
            self._learn(entry, label["label"], label["time"], lanes, out, record)
        elif event_id in self.store.labels:
            self._new_labels.append(self.store.labels[event_id])

    def _learn(self, entry: PendingEvent, label: Any, label_time: int, lanes: list[Any],
               out: BatchOutput, record: InputRecord | None) -> None:
        made = {m[0]: m for m in entry.predictions}
        for lane in lanes:
            prediction = made.get(lane.model.name)
            if prediction is None:
                continue
            _, x, predicted, proba, _ = prediction
            try:
                y = validate_label(label, lane.model.task)
            except ValidationError as exc:
                if record is not None:
                    out.dead_letters.append(dead_letter(record, exc.reason, str(exc),
                                                        lane.model.name))
                continue
            lane.learn(entry.event_id, x, y, predicted, proba, label_time - entry.event_time,
                       timed=out.labels % TIMING_SAMPLE == 0)

    def end_batch(self, out: BatchOutput, now_ms: int) -> None:
        """Expire old entries (dead-letter orphan labels); encode what must be persisted."""
        _, orphan_labels = self.store.expire(now_ms)
        for label in orphan_labels:
            topic, partition, offset = label.origin
            out.dead_letters.append(dead_letter(
                _Origin(topic, partition, offset, label.raw), "unknown_event_id",
                f"no event {label.event_id!r} arrived within the label TTL", None))
        if self._new_events or self._new_labels:
            out.pending = encode_pending(self._new_events, self._new_labels)
            self._new_events, self._new_labels = [], []

    async def rebuild(self, records: AsyncIterable[Any], learned: Any, now_ms: int,
                      partitions: Collection[int] | None = None,
                      models: Collection[str] = ()) -> int:
        """Restore the store from the pending log; ``learned(event_id)`` says what to drop.

        With ``partitions`` (a per-partition takeover), only their entries are added to
        what the store holds: events predicted by one of ``models`` and labels read from
        those partitions of the labels topic. Returns the entries added."""
        sources = None if partitions is None else self._label_sources(partitions)
        count = 0
        async for record in records:
            events, labels = decode_pending(record.value)
            for entry in events:
                if sources is None or _predicted_by(entry, models):
                    self.store.events[entry.event_id] = entry
                    count += 1
            for label in labels:
                if sources is None or label.origin[:2] in sources:
                    self.store.labels[label.event_id] = label
                    count += 1
        for store in (self.store.events, self.store.labels):
            for event_id in [e for e in store if learned(e)]:
                del store[event_id]
        self.store.sort_by_age()
        self.store.expire(now_ms)
        return count

    def release(self, partition: int, models: Collection[str]) -> int:
        """Drop the entries of a partition now owned elsewhere (its new owner rebuilds
        them from the pending log); they are neither expired nor counted. Returns how many."""
        sources = self._label_sources([partition])
        events = [e.event_id for e in self.store.events.values() if _predicted_by(e, models)]
        labels = [label.event_id for label in self.store.labels.values()
                  if label.origin[:2] in sources]
        for event_id in events:
            del self.store.events[event_id]
        for event_id in labels:
            del self.store.labels[event_id]
        return len(events) + len(labels)

    def _label_sources(self, partitions: Collection[int]) -> set[tuple[str, int]]:
        """(labels topic, partition) of the early labels read from ``partitions``."""
        return {(self.topic, p) for p in partitions}


def _predicted_by(entry: PendingEvent, models: Collection[str]) -> bool:
    """Did one of ``models`` predict this pending event (per partition: its owner's)?"""
    return any(made[0] in models for made in entry.predictions)


class _Origin:
    """Where an orphan label came from (shaped like a consumed record)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.value = topic, partition, offset, value
        self.key: bytes | None = None
