"""Kafka I/O of the history: append events, read them back, and the snapshot index.

Reads stop at a known position -- the writer's own record, or the high-water mark
reported by a fetch response (``streams/kafka_clients.py``).

Delivery guarantee: :meth:`HistoryLog.append` returns only after the broker has
acknowledged every event (``acks=all``) and returns their offsets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from riverbed.streams.config import BrokerSettings
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import HistoryEvent
from riverbed.streams.history_codec import KIND_HEADER, decode_event, encode_event, kind_of
from riverbed.streams.kafka_clients import read_to_end
from riverbed.streams.output import BatchProducer


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """A record of the history topic that is not a decodable riverbed event: skipped, never
    fatal (the history is read by every worker and by ``replay``; one garbage record must
    not stop them). ``key`` tells whether it claims to belong to a model."""

    offset: int
    key: bytes | None
    reason: str


class HistoryLog:
    """The ``riverbed.history`` topic (one partition, key = model)."""

    def __init__(self, broker: BrokerSettings, topic: str, producer: BatchProducer | None
                 ) -> None:
        self.broker = broker
        self.topic = topic
        self.producer = producer

    async def append(self, events: Sequence[HistoryEvent], via: AIOKafkaProducer | None = None
                     ) -> list[int]:
        """Append ``events`` in order; their offsets once acknowledged. ``via``: another
        producer (the transactional one, inside its open transaction)."""
        kafka = via or (self.producer.producer if self.producer is not None else None)
        assert kafka is not None, "producer not started"
        futures = [await kafka.send(self.topic, value=encode_event(e), key=e.model.encode(),
                                    partition=0, headers=[(KIND_HEADER, kind_of(e).encode())])
                   for e in events]
        return [metadata.offset for metadata in await asyncio.gather(*futures)]

    async def read(self, start: int = 0, until: int | None = None,
                   idle_timeout_s: float = 30.0, *,
                   skipped: list[SkippedRecord] | None = None) -> AsyncIterator[HistoryEvent]:
        """Events from ``start`` up to offset ``until`` (inclusive), else up to high-water.

        Records that do not decode as history events (garbage, another producer's data,
        an unknown kind) are not yielded; each is appended to ``skipped`` if given."""
        async for record in read_to_end(self.broker, self.topic, start, until, idle_timeout_s):
            try:
                yield decode_event(record.value or b"", record.offset)
            except DecodeError as exc:
                if skipped is not None:
                    skipped.append(SkippedRecord(record.offset, record.key, str(exc)))


class SnapshotIndex:
    """``riverbed.snapshots``: where each model's newest snapshot starts in the history."""

    def __init__(self, broker: BrokerSettings, topic: str, producer: BatchProducer | None
                 ) -> None:
        self.broker = broker
        self.topic = topic
        self.producer = producer

    async def publish(self, model: str, entry: dict[str, Any],
                      via: AIOKafkaProducer | None = None) -> None:
        """Record ``entry`` (snapshot_id, seq, offset, epoch, lineage) for ``model``."""
        kafka = via or (self.producer.producer if self.producer is not None else None)
        assert kafka is not None, "producer not started"
        future = await kafka.send(self.topic, value=json.dumps(entry).encode(),
                                  key=index_key(model, entry), partition=0)
        await future

    async def entries(self, model: str) -> list[dict[str, Any]]:
        """Every index entry of ``model`` still on the topic, oldest first."""
        found = []
        async for record in read_to_end(self.broker, self.topic):
            if record.key is not None and index_key_model(record.key) == model:
                entry = _index_entry(record.value)
                if entry is not None:
                    found.append(entry)
        return found


#: separates the parts of an index key (model names may contain '@' and ':')
_KEY_SEPARATOR = "\x1f"


def index_key(model: str, entry: dict[str, Any]) -> bytes:
    """The key of an index entry: ``model, epoch, kind``. The index topic is compacted,
    so the newest entry per key survives: each epoch keeps its claim marker and its newest
    snapshot entry (a fallback chain of one snapshot per epoch, and every marker the
    zombie check in ``agents/learner.py: valid_entries`` needs)."""
    kind = "claimed" if entry.get("marker") == "claimed" else "snapshot"
    return _KEY_SEPARATOR.join((model, str(entry.get("epoch")), kind)).encode()


def index_key_model(key: bytes) -> str | None:
    """The model an index key names (keys written before compaction: the bare name)."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text.split(_KEY_SEPARATOR, 1)[0]


def _index_entry(value: bytes | None) -> dict[str, Any] | None:
    """A well-formed index entry, or None (garbage on the index is skipped: the index only
    speeds up restores; the history is the source of truth)."""
    try:
        entry = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
        return None
    if entry.get("marker") == "claimed":
        return entry
    ints = ("offset", "chunks", "seq", "lineage")
    if not all(isinstance(entry.get(k), int) and entry[k] >= 0 for k in ints):
        return None
    return entry if entry["chunks"] > 0 else None
