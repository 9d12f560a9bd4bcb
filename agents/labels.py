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
history shows as learned, minus what expired meanwhile. The rebuild does not read the
log from its start: every ``Learned`` record carries the pending log's *low-water mark*
(under the source ``<pending topic>:0`` of its offsets) -- an offset below which no
record holds a live entry -- and the rebuild starts at the lowest mark of the models it
serves (:meth:`LabelJoin.low_water`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterable, Callable, Collection, Sequence
from typing import Any

from riverbed.agents.batch import BatchOutput, InputRecord, LearningLane, Prediction, dead_letter
from riverbed.schemas import load_schema
from riverbed.streams.codec import Decoder, SchemaRegistry, make_codec
from riverbed.streams.config import Settings
from riverbed.streams.deadletter import UnreadableRecord
from riverbed.streams.errors import EventError, ValidationError
from riverbed.streams.features import check_event_id
from riverbed.streams.history import HistoryFold
from riverbed.streams.pending import EarlyLabel, PendingEvent, PendingStore
from riverbed.streams.pending_codec import check_pending, decode_pending, encode_pending
from riverbed.streams.telemetry import TIMING_SAMPLE


@dataclasses.dataclass(slots=True)
class _LogRecord:
    """A pending-log record that may hold live entries."""

    offset: int
    event_ids: list[str]
    #: index of the first id not known to be gone
    cursor: int = 0


class LabelJoin:
    """Join state and rules; called by the inference processor, one batch at a time."""

    def __init__(self, settings: Settings, registry: SchemaRegistry | None = None,
                 decoder: Decoder | None = None) -> None:
        self.topic = settings.topics.labels
        self.decoder = decoder or make_codec(load_schema("label"), f"{self.topic}-value", registry)
        self.store = PendingStore(int(settings.labels.ttl_s * 1000), settings.labels.max_pending)
        self.max_id_length = settings.limits.max_event_id_length
        self._new_events: list[PendingEvent] = []
        self._new_labels: list[EarlyLabel] = []
        #: the source under which Learned records carry the pending log's low-water mark
        self.log_source = f"{settings.topics.pending}:0"
        #: pending-log records holding entries that may be live, in offset order
        self._log: deque[_LogRecord] = deque()
        #: the offset the next pending-log record will get at the earliest (None: unknown)
        self._log_end: int | None = None
        #: where the last rebuild started reading the pending log, and how many records
        self.rebuilt_from: int | None = None
        self.records_read = 0
        #: pending-log records that did not decode (skipped by rebuilds)
        self.skipped_records = 0

    def hold(self, event_id: str, made: list[Prediction], event_time: int,
             lanes: Sequence[LearningLane],
             out: BatchOutput, now_ms: int) -> None:
        """An unlabelled event was predicted: wait for its label (or join an early one)."""
        entry = PendingEvent(event_id, tuple(made), event_time, now_ms)
        early = self.store.add_event(entry)
        if early is None:
            self._new_events.append(entry)
        else:
            topic, partition, offset = early.origin
            self._learn(entry, early.label, early.label_time, lanes, out,
                        _Origin(topic, partition, offset, early.raw))

    def on_label(self, record: InputRecord, lanes: Sequence[LearningLane], out: BatchOutput,
                 now_ms: int) -> None:
        """A record from the labels topic. Poison-proof: whatever the bytes or the value,
        the record ends as a join, a held early label, a counted duplicate or a dead letter
        (reason and original bytes) -- never an exception out of the batch."""
        try:
            if isinstance(record, UnreadableRecord):
                raise EventError(record.reason, reason="unreadable_record")
            label = self.decoder.decode(record.value or b"")
            event_id, value, label_time = label["event_id"], label["label"], label["time"]
            check_event_id(event_id, self.max_id_length)
            if not self._valid_for(value, lanes):  # no model here may learn it: dead letter
                for lane in lanes:
                    lane.label_rule.check(value)  # raises with the precise reason
                raise ValidationError(f"label {value!r} for no model", reason="invalid_label")
            if any(lane.already_learned(event_id) for lane in lanes):
                self.store.counters.duplicate_labels += 1
                return
            entry = self.store.add_label(event_id, value, label_time, now_ms,
                                         raw=record.value or b"",
                                         origin=(record.topic, record.partition, record.offset))
            if entry is not None:
                self._learn(entry, value, label_time, lanes, out, record)
            elif event_id in self.store.labels:
                self._new_labels.append(self.store.labels[event_id])
        except EventError as exc:
            out.dead_letters.append(dead_letter(record, exc.reason, str(exc), None))
        except Exception as exc:  # a model failing on a validated label: never stop
            out.dead_letters.append(dead_letter(record, "internal_error",
                                                f"{type(exc).__name__}: {exc}", None))

    @staticmethod
    def _valid_for(label: Any, lanes: Sequence[LearningLane]) -> list[LearningLane]:
        """The lanes whose model may learn ``label`` (its LabelRule accepts it)."""
        valid = []
        for lane in lanes:
            try:
                lane.label_rule.check(label)
            except ValidationError:
                continue
            valid.append(lane)
        return valid

    def _learn(self, entry: PendingEvent, label: Any, label_time: int,
               lanes: Sequence[LearningLane], out: BatchOutput, record: InputRecord | None
               ) -> None:
        """Learn ``label`` for ``entry`` on every lane whose model predicted it; a model that
        may not learn this label gets a dead letter ``invalid_label`` naming it."""
        made = {m.model: m for m in entry.predictions}
        for lane in lanes:
            prediction = made.get(lane.model.name)
            if prediction is None:
                continue
            try:
                y = lane.label_rule.check(label)
            except ValidationError as exc:
                if record is not None:
                    out.dead_letters.append(dead_letter(record, exc.reason, str(exc),
                                                        lane.model.name))
                continue
            lane.learn(entry.event_id, prediction.x, y, prediction.prediction, prediction.proba,
                       label_time - entry.event_time, timed=out.labels % TIMING_SAMPLE == 0,
                       extracted_now=False)

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
            out.pending_ids = [e.event_id for e in self._new_events] + [
                label.event_id for label in self._new_labels]
            self._new_events, self._new_labels = [], []

    def appended(self, offset: int, event_ids: list[str]) -> None:
        """The pending-log record holding ``event_ids`` was acknowledged at ``offset``
        (records are appended one at a time, in batch order)."""
        self._log.append(_LogRecord(offset, event_ids))
        self._log_end = max(self._log_end or 0, offset + 1)

    def low_water(self) -> int | None:
        """An offset of the pending log below which no record holds a live entry (None
        before the log's position is known). Entries not yet appended will land at or
        above the current end, so the mark stays valid while appends are in flight."""
        events, labels = self.store.events, self.store.labels
        while self._log:
            head = self._log[0]
            ids, i = head.event_ids, head.cursor
            while i < len(ids) and ids[i] not in events and ids[i] not in labels:
                i += 1  # gone (joined, expired, evicted, released); a re-added id lives
            if i < len(ids):  # in a later record too, so it is never needed from this one
                head.cursor = i
                return head.offset
            self._log.popleft()
        return self._log_end

    async def rebuild(self, records: AsyncIterable[InputRecord], learned: Callable[[str], bool],
                      now_ms: int,
                      partitions: Collection[int] | None = None,
                      models: Collection[str] = (), start: int = 0) -> int:
        """Restore the store from the pending log (``records``, read from offset ``start``:
        see :func:`pending_log_start`); ``learned(event_id)`` says what to drop.

        With ``partitions`` (a per-partition takeover), only their entries are added to
        what the store holds: events predicted by one of ``models`` and labels read from
        those partitions of the labels topic. Returns the entries added."""
        sources = None if partitions is None else self._label_sources(partitions)
        count = 0
        self.rebuilt_from, self.records_read = start, 0
        self._log_end = max(self._log_end or 0, start)
        async for record in records:
            self.records_read += 1
            self._log_end = max(self._log_end, record.offset + 1)
            try:
                events, labels = decode_pending(record.value or b"")
                check_pending(events, labels)
            except Exception:  # not ours / damaged / forged: skipped and counted, never fatal
                self.skipped_records += 1
                continue
            kept = [e for e in events if sources is None or _predicted_by(e, models)]
            kept_labels = [label for label in labels
                           if sources is None or label.origin[:2] in sources]
            for entry in kept:
                self.store.events[entry.event_id] = entry
            for label in kept_labels:
                self.store.labels[label.event_id] = label
            count += len(kept) + len(kept_labels)
            if kept or kept_labels:
                self._log.append(_LogRecord(record.offset, [e.event_id for e in kept]
                                            + [label.event_id for label in kept_labels]))
        self._log = deque(sorted(self._log, key=lambda appended: appended.offset))
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


def pending_log_start(log_source: str, folds: Collection[HistoryFold]) -> int:
    """Where a rebuild for the models of ``folds`` starts reading the pending log: the
    lowest low-water mark their histories carry (0 if one of them has none yet)."""
    marks = [fold.offsets.get(log_source) for fold in folds]
    return min((0 if mark is None else mark for mark in marks), default=0)


def _predicted_by(entry: PendingEvent, models: Collection[str]) -> bool:
    """Did one of ``models`` predict this pending event (per partition: its owner's)?"""
    return any(made.model in models for made in entry.predictions)


class _Origin:
    """Where an orphan label came from (shaped like a consumed record)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.value = topic, partition, offset, value
        self.key: bytes | None = None
