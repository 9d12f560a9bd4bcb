"""Read a topic from its start (or end) and yield decoded records as JSON-ready dicts.

Partitions are assigned directly (no consumer group, nothing committed), so tailing
never disturbs a deployment. The decoder is chosen by topic: events, predictions, labels
and metrics reports (the schema ``top`` reads) are Avro; dead letters are printed as
headers plus the original bytes (base64).
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import TopicPartition

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec, SchemaRegistry, framed_ids, make_codec
from riverbed.streams.config import Settings
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.errors import DecodeError, UsageError
from riverbed.streams.kafka_clients import PartitionReader, Record
from riverbed.streams.registry import RegistryClient


def decoder_for(
    settings: Settings, topic: str, registry: SchemaRegistry | None = None
) -> Callable[[Any], dict[str, Any]]:
    """A function turning a consumed record of ``topic`` into a JSON-ready dict."""
    t = settings.topics
    schema_name = {t.events: settings.event.schema, t.predictions: "prediction",
                   t.labels: "label", t.metrics: "metrics_report"}.get(topic)
    if topic == t.dead_letters:
        def dead(record: Any) -> dict[str, Any]:
            value = base64.b64encode(record.value or b"").decode()
            return {**parse_headers(record.headers), "value_base64": value}
        return dead
    if schema_name is None:
        known = ", ".join([t.events, t.predictions, t.labels, t.dead_letters, t.metrics])
        raise UsageError(f"riverbed does not know the schema of topic {topic!r} "
                         f"(it can tail {known})")
    codec: Any
    if topic == t.metrics:  # the reporter writes plain Avro, with or without a registry
        codec = AvroCodec(load_schema(schema_name))
    else:
        codec = make_codec(load_schema(schema_name, settings.base_dir), f"{topic}-value",
                           registry)

    def decode(record: Any) -> dict[str, Any]:
        try:
            return codec.decode(record.value or b"")
        except DecodeError as exc:
            return {"_error": exc.reason, "_detail": str(exc), "_offset": record.offset}
    return decode


async def tail(
    settings: Settings, topic: str, from_beginning: bool = True, idle_timeout_s: float = 5.0,
    registry: RegistryClient | None = None,
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(record, decoded)`` until no record arrived for ``idle_timeout_s``. With a
    ``registry``, the schema ids of each fetch are resolved before it is decoded."""
    decode = decoder_for(settings, topic, registry)
    async with PartitionReader(settings.broker, start="beginning" if from_beginning else "end"
                               ) as reader:
        await reader.assign_topic(topic)
        while True:
            fetched = await reader.fetch(int(idle_timeout_s * 1000))
            if not fetched:
                return
            if registry is not None and topic not in (settings.topics.metrics,
                                                      settings.topics.dead_letters):
                await registry.prefetch(framed_ids(r.value for rs in fetched.values() for r in rs))
            for records in fetched.values():
                for record in records:
                    yield record, decode(record)


async def collect(settings: Settings, topic: str, partitions: int, expected: int,
                  timeout_s: float = 60.0, settle_s: float = 0.0) -> list[Record]:
    """Records of ``topic`` from the start until ``expected`` arrived (deadline ``timeout_s``).

    With ``settle_s``, keep reading that long after reaching ``expected`` so that extra
    (unexpected) records would be seen too.
    """
    records: list[Record] = []
    async with PartitionReader(settings.broker,
                               [TopicPartition(topic, p) for p in range(partitions)],
                               fetch_max_wait_ms=50) as reader:
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while time.monotonic() < deadline:
            for part in (await reader.fetch(100)).values():
                records.extend(part)
            if len(records) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    return records
