"""The inference agent: decode, validate, predict, then learn -- one micro-batch at a time.

Delivery guarantee: **at-least-once** predictions and dead letters. A batch's input
offsets are committed only after every prediction and dead letter of that batch has
been acknowledged by the broker (``acks=all``). After a crash, the uncommitted tail is
processed again, so a prediction may be published twice (same ``event_id``); consumers
deduplicate on ``(event_id, model)``. In this process learning is in-process and not yet
deduplicated across restarts -- the event-sourced learner (issue 2/4) makes it exactly-once.

Why batches: Faust's per-message path costs 200-330 us per event here; this agent pays
Faust's per-item cost once per *batch* (see ``streams/ingest.py``) and does only plain
Python per event: one Avro decode, one feature dict, predict, learn, one Avro encode.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from streams.codec import Decoder, Encoder
from streams.config import Settings
from streams.deadletter import DeadLetter
from streams.errors import EventError, ValidationError
from streams.features import FeatureExtractor, validate_label
from streams.history import Example
from streams.models import OnlineModel
from streams.telemetry import WorkerStats


class InputRecord(Protocol):
    """What the agent needs of a consumed record (aiokafka's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclasses.dataclass
class BatchOutput:
    """What one batch produces: predictions by output partition, and dead letters."""

    predictions: dict[int, list[tuple[bytes | None, bytes]]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    events: int = 0
    #: History events to append after the outputs are acknowledged, per learner.
    history: list[tuple[Any, list[Any]]] = dataclasses.field(default_factory=list)


class InferenceProcessor:
    """Turns a batch of raw event records into prediction and dead-letter records.

    Pure CPU work, no I/O and no awaits. Every event is fully validated for every
    model *before* any model predicts or learns, so a bad event never touches state.
    """

    def __init__(
        self,
        settings: Settings,
        event_schema: Mapping[str, Any],
        decoder: Decoder,
        prediction_encoder: Encoder,
        models: Sequence[OnlineModel],
        stats: WorkerStats | None = None,
        learners: Sequence[Any] | None = None,
    ) -> None:
        self.event = settings.event
        self.max_bytes = settings.limits.max_event_bytes
        self.decoder = decoder
        self.encoder = prediction_encoder
        self.models = list(models)
        self.extractors = [
            FeatureExtractor(event_schema, settings.event, m.spec, settings.limits)
            for m in self.models
        ]
        self.stats = stats if stats is not None else WorkerStats()
        self.learners = list(learners) if learners is not None else [None] * len(self.models)

    def process(self, records: Iterable[InputRecord]) -> BatchOutput:
        """Process ``records`` in order; returns what must be published and recorded."""
        out = BatchOutput()
        lanes = [_Lane(m, e, lr) for m, e, lr in
                 zip(self.models, self.extractors, self.learners, strict=True)]
        id_field, key_field = self.event.id_field, self.event.key_field
        ts_field, label_field = self.event.timestamp_field, self.event.label_field
        decode, encode = self.decoder.decode, self.encoder.encode
        now_ms = int(time.time() * 1000)
        offsets: dict[str, int] = {}
        for record in records:
            out.events += 1
            source = f"{record.topic}:{record.partition}"
            offsets[source] = record.offset + 1
            active = [lane for lane in lanes if not lane.covered(source, record.offset)]
            if not active:
                continue  # the history covers it: predicted and learned before a restart
            model_name: str | None = None
            try:
                value = record.value
                if value is None or len(value) > self.max_bytes:
                    raise EventError(
                        "empty (tombstone) value" if value is None else
                        f"{len(value)} bytes > limit {self.max_bytes}", reason="bad_size")
                event = decode(value)
                event_id = event[id_field]
                if not event_id:
                    raise ValidationError("empty event id", reason="missing_event_id")
                label = event.get(label_field)
                inputs = []
                for lane in active:
                    model_name = lane.model.name
                    x = lane.extractor.extract(event)
                    y = None if label is None else validate_label(label, lane.model.task)
                    inputs.append((lane, x, y))
                model_name = None
                outputs = []
                for lane, x, y in inputs:
                    model = lane.model
                    model_name = model.name
                    seq = model.seq
                    prediction, proba = model.predict(x)
                    if y is not None:
                        lane.learn(event_id, x, y)
                    outputs.append(encode({
                        "event_id": event_id, "key": event[key_field], "model": model.name,
                        "model_seq": seq, "lineage": model.lineage, "prediction": prediction,
                        "probabilities": proba, "event_time": event[ts_field],
                        "prediction_time": now_ms,
                    }))
                out.predictions[record.partition].extend((record.key, o) for o in outputs)
            except EventError as exc:
                out.dead_letters.append(_dead(record, exc.reason, str(exc), model_name))
            except Exception as exc:  # a model or encoder failure must not kill the worker
                reason = "model_error" if model_name else "internal_error"
                detail = f"{type(exc).__name__}: {exc}"
                out.dead_letters.append(_dead(record, reason, detail, model_name))
        for lane in lanes:
            if lane.learner is not None and offsets:
                out.history.append((lane.learner, lane.history_events(offsets)))
        self._count(out, lanes)
        return out

    def _count(self, out: BatchOutput, lanes: list[_Lane]) -> None:
        stats = self.stats
        stats.events += out.events
        stats.batches += 1
        for dead in out.dead_letters:
            stats.dead_letters[dead.reason] += 1
        for lane in lanes:
            stats.learned[lane.model.name] += lane.model.seq - lane.seq_before
            stats.model_seq[lane.model.name] = lane.model.seq
        predictions = sum(len(v) for v in out.predictions.values())
        if len(self.models) == 1:
            stats.predictions[self.models[0].name] += predictions
        else:
            for model in self.models:
                stats.predictions[model.name] += predictions // len(self.models)


class _Lane:
    """One model's view of a batch: dedup against its history, examples learned."""

    __slots__ = ("model", "extractor", "learner", "examples", "seq_before", "batch_ids", "xs")

    def __init__(self, model: OnlineModel, extractor: FeatureExtractor, learner: Any) -> None:
        self.model, self.extractor, self.learner = model, extractor, learner
        self.examples: list[Example] = []
        self.seq_before = model.seq
        self.batch_ids: set[str] = set()

    def covered(self, source: str, offset: int) -> bool:
        if self.learner is not None and self.learner.should_skip(source, offset):
            self.learner.skipped_replayed += 1
            return True
        return False

    def learn(self, event_id: str, x: dict[str, float], y: Any) -> None:
        if self.learner is not None:
            if event_id in self.batch_ids or self.learner.fold.seen(event_id):
                self.learner.skipped_duplicates += 1
                return
            self.batch_ids.add(event_id)
            self.examples.append(Example(event_id, x, y))
        self.model.learn(x, y)

    def history_events(self, offsets: dict[str, int]) -> list[Any]:
        events: list[Any] = self.learner.record_batch(
            self.seq_before, self.examples, offsets, [e.x for e in self.examples])
        if self.learner.snapshot_due():
            events += self.learner.snapshot_events()
        return events


def _dead(record: InputRecord, reason: str, detail: str, model: str | None) -> DeadLetter:
    return DeadLetter(
        value=record.value, key=record.key, reason=reason, detail=detail,
        source_topic=record.topic, source_partition=record.partition,
        source_offset=record.offset, model=model,
    )


def register_inference_agent(
    app: Any, batches: Any, processor: InferenceProcessor, output: Any, ingest: Any,
    settings: Settings, before_batch: Any = None, guard: Any = None,
) -> Any:
    """Register the batch inference agent on ``app``, reading ``batches`` (a channel).

    Acks are awaited by a separate task, in batch order, so the agent can process the
    next batch while the broker acknowledges the previous one; ``ingest.done`` is called
    strictly in order, and a failed publish crashes the worker (nothing is committed
    past it, so a restart re-processes it).
    """
    import asyncio

    topics = settings.topics
    pending: asyncio.Queue[tuple[list[Any], list[Any], Any]] = asyncio.Queue(maxsize=8)

    @app.agent(batches, name="riverbed.inference", concurrency=1)
    async def inference(stream: Any) -> None:
        lock = guard or asyncio.Lock()
        async for batch in stream:
            async with lock:  # models are not touched by anyone else meanwhile
                if before_batch is not None:
                    await before_batch()  # e.g. take over again after being fenced
                if batch.generation != ingest.offsets.generation:
                    continue  # fetched before a rewind/revoke: it will be fetched again
                result = processor.process(batch.records)
            futures: list[Any] = []
            for partition, records in result.predictions.items():
                futures += await output.publish(topics.predictions, partition, records)
            if result.dead_letters:
                futures += await output.publish_dead_letters(
                    topics.dead_letters, result.dead_letters
                )
            await pending.put((futures, result.history, batch))

    @app.task
    async def confirm_in_order() -> None:
        # steps 2-4 of the learner's batch protocol (see agents/learner.py)
        while True:
            futures, history, batch = await pending.get()
            try:
                await asyncio.gather(*futures)                          # 2. outputs acked
                for learner, events in history:                         # 3. history appended
                    offsets = await learner.history.append(events)
                    await learner.publish_index(events, offsets)
                    learner.mark_durable(events)
            except Exception as exc:  # the broker refused our output: stop, do not commit
                await app.crash(exc)
                return
            ingest.done(batch)                                          # 4. may commit

    return inference
