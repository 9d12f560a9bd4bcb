"""Stream a dataset into the events topic as Avro, keyed, at a chosen rate.

Records are partitioned with Kafka's default partitioner and sent as whole record
batches; the call returns once the broker has acknowledged every record
(``acks=all``), so "produced" means "durable on the broker".
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from riverbed.schemas import load_schema
from riverbed.streams.codec import SchemaRegistry, make_codec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import DATASET_SCHEMAS, check_dataset, corrupt, events
from riverbed.streams.output import BatchProducer
from riverbed.streams.partitioner import partition_for
from riverbed.streams.registry import RegistryClient, register_encoders


@dataclasses.dataclass
class ProduceReport:
    """What was sent: counts, and the label of every valid labelled event."""

    sent: int = 0
    valid: int = 0
    bad: int = 0
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


async def produce(
    settings: Settings, dataset: str, count: int, rate: float = 0.0, *,
    label_fraction: float = 1.0, bad_fraction: float = 0.0, seed: int = 7,
    chunk: int = 2000, registry: RegistryClient | None = None,
    on_progress: Callable[[int], None] | None = None, keep_labels: bool = True,
    labels: dict[str, Any] | None = None, label_delay_s: float = 0.0,
) -> ProduceReport:
    """Send ``count`` events of ``dataset`` (``rate`` events/s, 0 = as fast as possible).

    With ``label_delay_s``, events go out unlabelled and each label follows on the labels
    topic after a uniform random delay in ``[0, label_delay_s]`` seconds. With a
    ``registry``, values are Confluent-framed; their schemas are registered first.
    """
    check_dataset(dataset)
    topic, partitions = settings.topics.events, settings.topics.partitions
    codec = make_codec(load_schema(DATASET_SCHEMAS[dataset]), f"{topic}-value", registry)
    rng = random.Random(seed + 1)
    if rate > 0:  # small chunks keep an open-loop rate smooth (about 100 sends/s)
        chunk = max(1, min(chunk, int(rate / 100)))
    report = ProduceReport(labels={} if labels is None else labels)
    delayed = DelayedLabels(settings, registry, label_delay_s, rng) if label_delay_s > 0 else None
    await register_encoders(registry, [codec, delayed and delayed.codec])
    chunker = _Chunker(codec, partitions, report, rng, bad_fraction, keep_labels, delayed)
    producer = BatchProducer(settings.broker)
    await producer.start()
    start = time.monotonic()
    futures: list[Any] = []
    try:
        stream = events(dataset, count, seed=seed, label_fraction=label_fraction)
        while True:
            by_partition, n = chunker.next_chunk(stream, chunk)
            if n == 0:
                break
            for partition, records in by_partition.items():
                futures += await producer.publish(topic, partition, records)
            if delayed is not None:
                futures += await delayed.send_due(producer)
            report.sent += n
            if on_progress:
                on_progress(n)
            if rate > 0:  # pace the open-loop schedule: event i is due at start + i/rate
                delay = start + report.sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if len(futures) > 64:
                await asyncio.gather(*futures)
                futures.clear()
        if delayed is not None:
            futures += await delayed.drain(producer)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    report.seconds = time.monotonic() - start
    return report


@dataclasses.dataclass
class _Chunker:
    """Encodes events (corrupting ``bad_fraction`` of them) into per-partition chunks."""

    codec: Any
    partitions: int
    report: ProduceReport
    rng: random.Random
    bad_fraction: float
    keep_labels: bool
    delayed: DelayedLabels | None

    def next_chunk(self, stream: Iterator[dict[str, Any]], size: int
                   ) -> tuple[dict[int, list[tuple[bytes, bytes]]], int]:
        """Up to ``size`` events of ``stream`` as (key, value) records by partition."""
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        report, n = self.report, 0
        for event in stream:
            key = event["key"].encode()
            if self.bad_fraction and self.rng.random() < self.bad_fraction:
                bad = corrupt(event, self.rng.randrange(5))
                value = bad if isinstance(bad, bytes) else self.codec.encode(bad)
                report.bad += 1
            else:
                if self.keep_labels and event["label"] is not None:
                    report.labels[event["event_id"]] = event["label"]
                if self.delayed is not None and event["label"] is not None:
                    self.delayed.schedule(key, event["event_id"], event["label"])
                    event = {**event, "label": None}
                value = self.codec.encode(event)
                report.valid += 1
            by_partition[partition_for(key, self.partitions)].append((key, value))
            n += 1
            if n >= size:
                break
        return by_partition, n


class DelayedLabels:
    """Labels scheduled to follow their events after a random delay."""

    def __init__(self, settings: Settings, registry: SchemaRegistry | None, max_delay_s: float,
                 rng: random.Random) -> None:
        self.topic, self.partitions = settings.topics.labels, settings.topics.partitions
        self.codec = make_codec(load_schema("label"), f"{self.topic}-value", registry)
        self.max_delay_s, self.rng = max_delay_s, rng
        self.heap: list[tuple[float, int, bytes, bytes]] = []
        self.counter = 0

    def schedule(self, key: bytes, event_id: str, label: Any) -> None:
        due = time.monotonic() + self.rng.uniform(0, self.max_delay_s)
        value = self.codec.encode({"event_id": event_id, "label": label,
                                   "time": int(time.time() * 1000)})
        self.counter += 1
        heapq.heappush(self.heap, (due, self.counter, key, value))

    async def send_due(self, producer: BatchProducer, until: float | None = None) -> list[Any]:
        """Send every label due by now (or by ``until``)."""
        limit = time.monotonic() if until is None else until
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        while self.heap and self.heap[0][0] <= limit:
            _, _, key, value = heapq.heappop(self.heap)
            by_partition[partition_for(key, self.partitions)].append((key, value))
        futures: list[Any] = []
        for partition, records in by_partition.items():
            futures += await producer.publish(self.topic, partition, records)
        return futures

    async def drain(self, producer: BatchProducer) -> list[Any]:
        """Send the rest, each no earlier than its due time."""
        futures: list[Any] = []
        while self.heap:
            delay = self.heap[0][0] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.05))  # pacing to the label schedule
            futures += await self.send_due(producer)
        return futures
