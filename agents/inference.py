"""The inference processor: decode, validate, predict, then learn -- one micro-batch at a time.

Pure CPU work: it turns a batch of input records into outputs (predictions, dead letters)
and history records; ``agents/batch_agent.py`` publishes them. Its part of the delivery
guarantee: every event is validated for every model before any model predicts or learns
(a bad event never touches state), and each model learns an event at most once -- records
its history already covers are skipped by offset, and labelled events it has already
learned (same ``event_id``) by the fold's id window. Predictions are at-least-once: a
re-processed batch predicts again (same ``event_id``; consumers deduplicate on
``(event_id, model)``).

Why batches: Faust's per-message path costs 200-330 us per event here; this processor pays
per-item costs once per *batch* (see ``streams/ingest.py``) and does only plain
Python per event: one Avro decode, one feature dict, predict, learn, one Avro encode.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any

from riverbed.agents.batch import (
    BatchLearner,
    BatchOutput,
    InputRecord,
    Prediction,
    dead_letter,
)
from riverbed.agents.labels import LabelJoin
from riverbed.streams.batch_metrics import p_true
from riverbed.streams.codec import Decoder, Encoder
from riverbed.streams.config import Settings
from riverbed.streams.deadletter import UnreadableRecord
from riverbed.streams.errors import EventError
from riverbed.streams.evaluation import ModelMonitor
from riverbed.streams.features import FeatureExtractor, LabelRule, check_event_id
from riverbed.streams.history import Examples, HistoryEvent, float_values, unpack_rows
from riverbed.streams.models import OnlineModel
from riverbed.streams.prediction_codec import PredictionWriter
from riverbed.streams.telemetry import TIMING_SAMPLE, WorkerStats
from riverbed.streams.training import TrainingBatch

__all__ = ["BatchOutput", "InferenceProcessor", "InputRecord", "ModelSlot", "dead_letter"]


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSlot:
    """One model served by the processor, with everything that goes with it."""

    model: OnlineModel
    extractor: FeatureExtractor
    #: its history's single writer (None when the history is disabled)
    learner: BatchLearner | None
    monitor: ModelMonitor
    #: the input partition it serves (None: every partition -- a global model)
    partition: int | None = None
    #: a prediction replica (``worker.scale_out = "replicas"``): it does not learn here;
    #: its labelled examples leave as :class:`TrainingBatch` records for the learner, and
    #: the model follows the history (``learner`` is then the replica's fold keeper)
    replica: bool = False


class InferenceProcessor:
    """Turns a batch of raw event (and label) records into outputs and history records.

    Pure CPU work, no I/O and no awaits. Every event is fully validated for every
    model *before* any model predicts or learns, so a bad event never touches state.
    Unlabelled events wait in the pending store for their label (``agents/labels.py``).
    """

    def __init__(
        self,
        settings: Settings,
        event_schema: Mapping[str, Any],
        decoder: Decoder,
        prediction_encoder: Encoder,
        models: Sequence[OnlineModel],
        stats: WorkerStats | None = None,
        learners: Sequence[BatchLearner | None] | None = None,
        join: LabelJoin | None = None,
    ) -> None:
        self.event = settings.event
        self.settings = settings
        self.event_schema = event_schema
        self.max_bytes = settings.limits.max_event_bytes
        self.max_id_length = settings.limits.max_event_id_length
        self.decoder = decoder
        self.encoder = prediction_encoder
        self.stats = stats if stats is not None else WorkerStats()
        #: the models served now, in order (per-partition ones come and go)
        self.slots: list[ModelSlot] = []
        replica = settings.worker.scale_out == "replicas"  # global models: replicas
        for model, learner in zip(models, learners or [None] * len(models), strict=True):
            self.add_model(model, learner, replica=replica)
        self.join = join
        #: events predicted so far (every TIMING_SAMPLE-th predict and learn is timed)
        self.predicted = 0
        #: the model whose step is under way (named in a dead letter if it fails)
        self._blame: str | None = None

    @property
    def models(self) -> list[OnlineModel]:
        """The models served now."""
        return [slot.model for slot in self.slots]

    @property
    def monitors(self) -> dict[str, ModelMonitor]:
        """Each served model's progressive-validation monitor, by model name."""
        return {slot.model.name: slot.monitor for slot in self.slots}

    def add_model(self, model: OnlineModel, learner: BatchLearner | None = None,
                  partition: int | None = None, replica: bool = False) -> ModelSlot:
        """Serve ``model`` from the next batch on (only for ``partition`` if given; as a
        prediction replica if ``replica``)."""
        slot = ModelSlot(model, FeatureExtractor(self.event_schema, self.settings.event,
                                                 model.spec, self.settings.limits,
                                                 binary=model.is_binary),
                         learner, ModelMonitor(model.task, model.spec.metrics), partition,
                         replica)
        self.slots.append(slot)
        return slot

    def remove_partition(self, partition: int) -> list[ModelSlot]:
        """Stop serving the models of ``partition``; returns their slots."""
        removed = [slot for slot in self.slots if slot.partition == partition]
        self.slots = [slot for slot in self.slots if slot.partition != partition]
        return removed

    def process(self, records: Iterable[InputRecord]) -> BatchOutput:
        """Process ``records`` in order; returns what must be published and recorded."""
        out = BatchOutput()
        now_ms = int(time.time() * 1000)
        lanes = [_Lane(slot, PredictionWriter(slot.model.name, slot.model.lineage, now_ms,
                                              self.encoder)) for slot in self.slots]
        sharded = any(lane.partition is not None for lane in lanes)
        offsets: dict[str, int] = {}
        partition_of: dict[str, int] = {}
        labels_topic = self.join.topic if self.join is not None else None
        topic, partition, source, covered_below, serving = None, -1, "", 0, lanes
        for record in records:
            out.events += 1
            if record.partition != partition or record.topic != topic:  # a new run
                topic, partition = record.topic, record.partition
                source = f"{topic}:{partition}"
                partition_of[source] = partition
                serving = [lane for lane in lanes if lane.partition in (None, partition)
                           ] if sharded else lanes
                covered_below = max((lane.covered_below(source) for lane in serving), default=0)
                if not serving:
                    out.unowned.add(source)
            offsets[source] = record.offset + 1
            if record.offset >= covered_below:
                active = serving  # the common case: no model has learned this record yet
            else:
                active = [lane for lane in serving if not lane.covered(source, record.offset)]
            if not active:
                continue  # the history covers it (handled before a restart), or unowned
            if topic == labels_topic:
                assert self.join is not None
                out.labels += 1
                self.join.on_label(record, active, out, now_ms)
            else:
                self._event(record, active, out, now_ms)
        mark = None
        if self.join is not None:
            self.join.end_batch(out, now_ms)
            mark = self.join.low_water()
        for lane in lanes:
            lane.score()
            covered = offsets if lane.partition is None else {
                s: o for s, o in offsets.items() if partition_of[s] == lane.partition}
            if lane.replica:
                if lane.ids:  # learned elsewhere: by the model's single learner
                    out.training.append(TrainingBatch(lane.model.name, lane.examples(),
                                                      covered, tuple(lane.made)))
            elif lane.learner is not None and covered:
                if mark is not None and self.join is not None:  # where a restart starts
                    covered = {**covered, self.join.log_source: mark}  # reading pending
                out.history.append((lane.learner, lane.history_events(lane.learner, covered)))
            out.drifts.extend((lane.model.name, seq) for seq in lane.drifts)
            out.learn_s.extend(lane.learn_s)
        self._count(out, lanes)
        return out

    def _event(self, record: InputRecord, active: list[_Lane], out: BatchOutput,
               now_ms: int) -> None:
        """Validate ``record`` for every active model, then predict and learn; a failure
        dead-letters the event, blaming the model whose step failed (if any)."""
        self._blame = None
        try:
            event, label, inputs = self._validated(record, active)
            hold = label is None and self.join is not None  # it waits for its label
            made = self._predict_and_learn(record, event, inputs, out, now_ms, hold)
            if hold:
                assert self.join is not None
                ev = self.event
                self.join.hold(event[ev.id_field], made, event[ev.timestamp_field], active,
                               out, now_ms)
        except EventError as exc:
            out.dead_letters.append(dead_letter(record, exc.reason, str(exc), self._blame))
        except Exception as exc:  # a model or encoder failure must not kill the worker
            reason = "model_error" if self._blame else "internal_error"
            detail = f"{type(exc).__name__}: {exc}"
            out.dead_letters.append(dead_letter(record, reason, detail, self._blame))

    def _validated(self, record: InputRecord, active: list[_Lane]) -> tuple[
            dict[str, Any], Any, list[tuple[_Lane, dict[str, float], Any]]]:
        """Decode ``record`` and build each active model's features and label; raises
        :class:`EventError` before any model is touched."""
        value = record.value
        if value is None or len(value) > self.max_bytes:
            if isinstance(record, UnreadableRecord):
                raise EventError(record.reason, reason="unreadable_record")
            raise EventError(
                "empty (tombstone) value" if value is None else
                f"{len(value)} bytes > limit {self.max_bytes}", reason="bad_size")
        event = self.decoder.decode(value)
        check_event_id(event[self.event.id_field], self.max_id_length)
        label = event.get(self.event.label_field)
        inputs = []
        for lane in active:
            self._blame = lane.model.name
            x = lane.extractor.extract(event)
            y = None if label is None else lane.label_rule.check(label)
            inputs.append((lane, x, y))
        self._blame = None
        return event, label, inputs

    def _predict_and_learn(
        self, record: InputRecord, event: dict[str, Any],
        inputs: list[tuple[_Lane, dict[str, float], Any]], out: BatchOutput, now_ms: int,
        hold: bool = False,
    ) -> list[Prediction]:
        """Predict, then learn from the label (if any), for every validated model. With
        ``hold`` (the event waits for its label) returns what each model predicted, for
        the pending store; otherwise an empty list (nothing would keep them)."""
        ev = self.event
        event_id, event_time = event[ev.id_field], event[ev.timestamp_field]
        outputs: list[bytes] = []
        made: list[Prediction] = []
        self.predicted += 1
        timed = self.predicted % TIMING_SAMPLE == 0
        for lane, x, y in inputs:
            model = lane.model
            self._blame = model.name
            seq = model.seq
            if timed:
                began = perf_counter()
                prediction, proba = model.predict(x)
                out.predict_s.append(perf_counter() - began)
            else:
                prediction, proba = model.predict(x)
            if y is not None:
                lane.learn(event_id, x, y, prediction, proba, now_ms - event_time, timed)
            if hold:
                made.append(Prediction(model.name, x, prediction, proba, seq))
            outputs.append(lane.writer.write(event_id, event[ev.key_field], seq, prediction,
                                             proba, event_time))
        predictions = out.predictions[record.partition]
        for encoded in outputs:
            predictions.append((record.key, encoded))
        for lane, _, _ in inputs:
            lane.predictions += 1
        out.latencies.append(now_ms - event_time)
        return made

    def _count(self, out: BatchOutput, lanes: list[_Lane]) -> None:
        stats = self.stats
        stats.events += out.events
        stats.batches += 1
        for dead in out.dead_letters:
            stats.dead_letters[dead.reason] += 1
        for lane in lanes:
            name = lane.model.name
            stats.learned[name] += lane.model.seq - lane.seq_before
            stats.model_seq[name] = lane.model.seq
            stats.drifts[name] += len(lane.drifts)
            stats.predictions[name] += lane.predictions
        stats.observe_latencies(out.latencies)
        stats.predict_seconds.observe_many(out.predict_s)
        stats.learn_seconds.observe_many(out.learn_s)


class _Lane:
    """One model's view of a batch: dedup against its history, examples learned, scoring.
    Lives for one batch (the fold is only replaced between batches, on takeover)."""

    __slots__ = ("batch_ids", "drifts", "extractor", "ids", "learn_s", "learner", "made",
                 "model", "monitor", "names", "p_true_only", "pack", "packed", "partition",
                 "predictions", "recent_ids", "replica", "scores", "seq_before", "width",
                 "writer", "xs", "ys")

    def __init__(self, slot: ModelSlot, writer: PredictionWriter) -> None:
        self.model, self.extractor, self.learner = slot.model, slot.extractor, slot.learner
        self.monitor, self.partition, self.replica = slot.monitor, slot.partition, slot.replica
        #: a replica's prediction for each of its examples (sent along to the learner)
        self.made: list[Any] = []
        self.predictions = 0
        #: (label, prediction made before learning, probabilities, label delay) per learn
        #: (label, prediction made before learning, what the monitor reads of the class
        #: probabilities, label delay) per learn: with Accuracy and LogLoss (the default)
        #: P(True) alone -- a dict per event kept to the batch's end would cost memory
        #: traffic the model's own work pays for (bench/hotpath.py, default model)
        self.scores: list[tuple[Any, Any, Any, int]] = []
        self.p_true_only = slot.monitor.scores_p_true
        #: the examples to record, as columns (``Examples``): no object per event
        self.ids: list[str] = []
        self.xs: list[dict[str, float]] = []
        self.ys: list[Any] = []
        #: the examples' features packed as they are learned (:meth:`Examples.dense`),
        #: instead of kept in ``xs``, while each row has every scalar feature: the
        #: extractor writes them in the schema's order, so equal length means equal keys
        #: in equal order. None: not (any more) -- ``xs`` holds every row
        self.names = slot.extractor.scalar_fields
        dense = (self.learner is not None and not self.replica and bool(self.names)
                 and not slot.extractor.map_fields)
        self.pack = struct.Struct(f"<{len(self.names)}d").pack if dense else None
        self.width = len(self.names)
        self.packed = bytearray()
        self.seq_before = self.model.seq
        self.batch_ids: set[str] = set()
        self.drifts: list[int] = []
        self.learn_s: list[float] = []
        #: writes this batch's predictions
        self.writer = writer
        #: the ids in the fold's applied-id window (a set: ``in`` at C speed)
        self.recent_ids: Container[str] = (
            self.learner.fold.recent_ids.members if self.learner is not None else ())

    @property
    def label_rule(self) -> LabelRule:
        return self.extractor.label_rule

    def covered_below(self, source: str) -> int:
        """Offsets of ``source`` below this are covered by the history (0: none)."""
        return self.learner.fold.applied_offset(source) if self.learner is not None else 0

    def covered(self, source: str, offset: int) -> bool:
        if self.learner is not None and self.learner.should_skip(source, offset):
            self.learner.skipped_replayed += 1
            return True
        return False

    def already_learned(self, event_id: str) -> bool:
        return event_id in self.batch_ids or event_id in self.recent_ids

    def learn(self, event_id: str, x: dict[str, float], y: Any, prediction: Any,
              proba: dict[Any, float], delay_ms: int, timed: bool = False,
              extracted_now: bool = True) -> bool:
        """Score the prediction made before learning, then learn; False if a duplicate.
        ``extracted_now``: ``x`` comes from this lane's extractor in this batch (not from
        the pending store, which may hold features extracted under another schema)."""
        if self.learner is not None:
            if self.already_learned(event_id):
                self.learner.skipped_duplicates += 1
                return False
            if self.pack is not None and extracted_now and len(x) == self.width:
                self.packed += self.pack(*x.values())
            else:
                if self.pack is not None:  # a feature left out (null), or held features
                    self.pack = None       # from the pending store: keep every row's dict
                    self.xs = unpack_rows(self.names, float_values(self.packed),
                                          len(self.ids))
                self.xs.append(x)
            self.ids.append(event_id)
            self.ys.append(y)
        self.batch_ids.add(event_id)
        self.scores.append((y, prediction, p_true(proba) if self.p_true_only else proba,
                            delay_ms))  # scored at the batch's end
        if self.replica:  # the learner learns it (streams/training.py); not this copy
            self.made.append(prediction)
            return True
        if timed:
            began = perf_counter()
            self.model.learn(x, y)
            self.learn_s.append(perf_counter() - began)
        else:
            self.model.learn(x, y)
        return True

    def examples(self) -> Examples:
        """The examples recorded in this batch, in learn order."""
        if self.pack is not None:
            return Examples.dense(self.ids, self.names, self.packed, self.ys)
        return Examples(self.ids, self.xs, self.ys)

    def score(self) -> None:
        """Progressive validation of this batch's learn steps, in learn order; a drift
        is recorded at the seq of the step that fired it."""
        if self.scores:
            ys, predictions, probas, delays = zip(*self.scores, strict=True)
            score = (self.monitor.update_many_p_true if self.p_true_only
                     else self.monitor.update_many)
            fired = score(ys, predictions, probas, delays, self.model.lineage)
            self.drifts = [self.seq_before + i for i in fired]
            self.scores = []

    def history_events(self, learner: BatchLearner, offsets: dict[str, int]
                       ) -> list[HistoryEvent]:
        """The batch's history records: Learned (and Created), drifts, a due snapshot."""
        events = learner.record_batch(self.seq_before, self.examples(), offsets)
        for seq in self.drifts:
            events.append(learner.annotate(seq, "drift",
                                           f"{type(self.monitor.detector).__name__}"))
        if learner.snapshot_due():
            events += learner.snapshot_events()
        return events
