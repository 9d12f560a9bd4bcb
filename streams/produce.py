"""Stream a dataset into the events topic as Avro, keyed, at a chosen rate.

Records are partitioned with Kafka's default partitioner and sent as whole record
batches; the call returns once the broker has acknowledged every record
(``acks=all``), so "produced" means "durable on the broker".
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from schemas import load_schema
from streams.codec import SchemaRegistry, make_codec
from streams.config import Settings
from streams.datasets import DATASET_SCHEMAS, corrupt, events
from streams.output import BatchProducer
from streams.partitioner import partition_for


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
    chunk: int = 2000, registry: SchemaRegistry | None = None,
    on_progress: Callable[[int], None] | None = None, keep_labels: bool = True,
    labels: dict[str, Any] | None = None,
) -> ProduceReport:
    """Send ``count`` events of ``dataset`` (``rate`` events/s, 0 = as fast as possible)."""
    if dataset not in DATASET_SCHEMAS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASET_SCHEMAS)}")
    topic, partitions = settings.topics.events, settings.topics.partitions
    codec = make_codec(load_schema(DATASET_SCHEMAS[dataset]), f"{topic}-value", registry)
    rng = random.Random(seed + 1)
    if rate > 0:  # small chunks keep an open-loop rate smooth (about 100 sends/s)
        chunk = max(1, min(chunk, int(rate / 100)))
    report = ProduceReport(labels={} if labels is None else labels)
    producer = BatchProducer(settings.broker.bootstrap_servers)
    await producer.start()
    start = time.monotonic()
    futures: list[Any] = []
    try:
        stream = events(dataset, count, seed=seed, label_fraction=label_fraction)
        while True:
            by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
            n = 0
            for event in stream:
                key = event["key"].encode()
                if bad_fraction and rng.random() < bad_fraction:
                    bad = corrupt(event, rng.randrange(5))
                    value = bad if isinstance(bad, bytes) else codec.encode(bad)
                    report.bad += 1
                else:
                    value = codec.encode(event)
                    report.valid += 1
                    if keep_labels and event["label"] is not None:
                        report.labels[event["event_id"]] = event["label"]
                by_partition[partition_for(key, partitions)].append((key, value))
                n += 1
                if n >= chunk:
                    break
            if n == 0:
                break
            for partition, records in by_partition.items():
                futures += await producer.publish(topic, partition, records)
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
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    report.seconds = time.monotonic() - start
    return report
