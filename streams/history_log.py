"""Kafka I/O of the history: append events, read them back, and the snapshot index.

Reads stop at a known position -- the writer's own record, or the high-water mark
reported by a fetch response (``streams/kafka_clients.py``).

Delivery guarantee: :meth:`HistoryLog.append` returns only after the broker has
acknowledged every event (``acks=all``) and returns their offsets. Every record it writes
is signed (``streams/history_codec.py: record_headers``); :meth:`HistoryLog.read` yields
only records whose signature holds, unless told to accept unsigned ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from riverbed.streams.config import BrokerSettings, Settings
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import HistoryEvent
from riverbed.streams.history_codec import decode_record, encode_event, record_headers
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
    """The ``riverbed.history`` topic (one partition, key = model), signed with ``key``
    (the snapshot key). ``accept_unsigned``: reads also yield records whose signature does
    not hold (``history.accept_unsigned_records``, for histories written before signing)."""

    def __init__(self, broker: BrokerSettings, topic: str, producer: BatchProducer | None,
                 key: bytes, *, accept_unsigned: bool = False) -> None:
        self.broker = broker
        self.topic = topic
        self.producer = producer
        self.key = key
        #: what reads verify records with (None: unsigned ones are taken too)
        self.verify_key: bytes | None = None if accept_unsigned else key

    @classmethod
    def of(cls, settings: Settings, producer: BatchProducer | None, key: bytes) -> HistoryLog:
        """The history of ``settings``, signed and verified with ``key``."""
        return cls(settings.broker, settings.topics.history, producer, key,
                   accept_unsigned=record_key(settings, key) is None)

    async def append(self, events: Sequence[HistoryEvent], via: AIOKafkaProducer | None = None
                     ) -> list[int]:
        """Append ``events`` in order; their offsets once acknowledged. ``via``: another
        producer (the transactional one, inside its open transaction)."""
        kafka = via or (self.producer.producer if self.producer is not None else None)
        assert kafka is not None, "producer not started"
        futures = []
        for event in events:
            value = encode_event(event)
            futures.append(await kafka.send(self.topic, value=value, key=event.model.encode(),
                                            partition=0,
                                            headers=record_headers(event, value, self.key)))
        return [metadata.offset for metadata in await asyncio.gather(*futures)]

    async def read(self, start: int = 0, until: int | None = None,
                   idle_timeout_s: float = 30.0, *,
                   skipped: list[SkippedRecord] | None = None) -> AsyncIterator[HistoryEvent]:
        """Events from ``start`` up to offset ``until`` (inclusive), else up to high-water.

        Records that are not signed history events (unsigned or forged, garbage, another
        producer's data, an unknown kind) are not yielded; each is appended to ``skipped``
        if given."""
        async for record in read_to_end(self.broker, self.topic, start, until, idle_timeout_s):
            try:
                yield decode_record(record.value, record.offset, record.headers,
                                    self.verify_key)
            except DecodeError as exc:
                if skipped is not None:
                    skipped.append(SkippedRecord(record.offset, record.key, str(exc)))


def record_key(settings: Settings, key: bytes) -> bytes | None:
    """What a reader of the history verifies records with: ``key``, or None when the
    settings accept unsigned records (``decode_record``)."""
    return None if settings.history.accept_unsigned_records else key


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
