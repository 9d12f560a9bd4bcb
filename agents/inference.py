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

    def process(self, records: Iterable[InputRecord]) -> BatchOutput:
        """Process ``records`` in order; returns what must be published."""
        out = BatchOutput()
        pairs = list(zip(self.models, self.extractors, strict=True))
        id_field, key_field = self.event.id_field, self.event.key_field
        ts_field, label_field = self.event.timestamp_field, self.event.label_field
        decode, encode = self.decoder.decode, self.encoder.encode
        now_ms = int(time.time() * 1000)
        for record in records:
            out.events += 1
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
                for model, extractor in pairs:
                    model_name = model.name
                    x = extractor.extract(event)
                    y = None if label is None else validate_label(label, model.task)
                    inputs.append((model, x, y))
                model_name = None
                outputs = []
                for model, x, y in inputs:
                    model_name = model.name
                    seq = model.seq
                    prediction, proba = model.predict(x)
                    if y is not None:
                        model.learn(x, y)
                    outputs.append(encode({
                        "event_id": event_id, "key": event[key_field], "model": model.name,
                        "model_seq": seq, "prediction": prediction, "probabilities": proba,
                        "event_time": event[ts_field], "prediction_time": now_ms,
                    }))
                out.predictions[record.partition].extend((record.key, o) for o in outputs)
            except EventError as exc:
                out.dead_letters.append(_dead(record, exc.reason, str(exc), model_name))
            except Exception as exc:  # a model or encoder failure must not kill the worker
                reason = "model_error" if model_name else "internal_error"
                detail = f"{type(exc).__name__}: {exc}"
                out.dead_letters.append(_dead(record, reason, detail, model_name))
        self._count(out)
        return out

    def _count(self, out: BatchOutput) -> None:
        stats = self.stats
        stats.events += out.events
        stats.batches += 1
        for dead in out.dead_letters:
            stats.dead_letters[dead.reason] += 1
        for model in self.models:
            stats.learned[model.name] += model.seq - stats.model_seq.get(model.name, 0)
            stats.model_seq[model.name] = model.seq
        predictions = sum(len(v) for v in out.predictions.values())
        if len(self.models) == 1:
            stats.predictions[self.models[0].name] += predictions
        else:
            for model in self.models:
                stats.predictions[model.name] += predictions // len(self.models)


def _dead(record: InputRecord, reason: str, detail: str, model: str | None) -> DeadLetter:
    return DeadLetter(
        value=record.value, key=record.key, reason=reason, detail=detail,
        source_topic=record.topic, source_partition=record.partition,
        source_offset=record.offset, model=model,
    )


def register_inference_agent(
    app: Any, batches: Any, processor: InferenceProcessor, output: Any, ingest: Any,
    settings: Settings,
) -> Any:
    """Register the batch inference agent on ``app``, reading ``batches`` (a channel).

    Acks are awaited by a separate task, in batch order, so the agent can process the
    next batch while the broker acknowledges the previous one; ``ingest.done`` is called
    strictly in order, and a failed publish crashes the worker (nothing is committed
    past it, so a restart re-processes it).
    """
    import asyncio

    topics = settings.topics
    pending: asyncio.Queue[tuple[list[Any], Any]] = asyncio.Queue(maxsize=8)

    @app.agent(batches, name="riverbed.inference", concurrency=1)
    async def inference(stream: Any) -> None:
        async for batch in stream:
            result = processor.process(batch.records)
            futures: list[Any] = []
            for partition, records in result.predictions.items():
                futures += await output.publish(topics.predictions, partition, records)
            if result.dead_letters:
                futures += await output.publish_dead_letters(
                    topics.dead_letters, result.dead_letters
                )
            await pending.put((futures, batch))

    @app.task
    async def confirm_in_order() -> None:
        while True:
            futures, batch = await pending.get()
            try:
                await asyncio.gather(*futures)
            except Exception as exc:  # the broker refused our output: stop, do not commit
                await app.crash(exc)
                return
            ingest.done(batch)

    return inference
