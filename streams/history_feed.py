"""Incremental reads of ``riverbed.history`` and ``riverbed.metrics`` for the HTTP API.

One :class:`~streams.kafka_clients.PartitionReader` (no group) reads both topics from the
beginning, on demand: every API request
that needs the history first calls :meth:`HistoryFeed.refresh`, which reads what was
appended since the last call -- up to the high-water marks reported by the fetches, and
for at most ``budget_s`` -- and folds it into a :class:`HistorySummary` and a
:class:`MetricsSeries` per model. The first request after a start reads the whole history
(``Learned`` records are decoded without their examples); later ones read only the tail.
Nothing is read while nobody asks. Records that do not decode, or that belong to no model
of this worker's config, are skipped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import BrokerSettings
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import Snapshot
from riverbed.streams.history_codec import decode_record
from riverbed.streams.history_summary import HistorySummary
from riverbed.streams.kafka_clients import PartitionReader
from riverbed.streams.metrics_series import MetricsSeries

log = logging.getLogger(__name__)


class HistoryFeed:
    """Summaries of the history and metrics series of the models named in the config."""

    def __init__(self, broker: BrokerSettings, history_topic: str, metrics_topic: str,
                 spec_names: Sequence[str], *, max_entries: int, max_points: int,
                 verify: Callable[[Snapshot], bool] | None = None,
                 record_key: bytes | None = None) -> None:
        self.broker = broker
        #: history records must be signed with it (None: unsigned ones are shown too)
        self.record_key = record_key
        self.history = TopicPartition(history_topic, 0)
        self.metrics = TopicPartition(metrics_topic, 0)
        names = "|".join(re.escape(n) for n in spec_names)
        #: a model of the config: a spec name, or a per-partition ``name@pN``
        self._ours = re.compile(rf"(?:{names})(?:@p\d{{1,6}})?") if names else None
        self.max_entries, self.max_points, self.verify = max_entries, max_points, verify
        self.summaries: dict[str, HistorySummary] = {}
        self.series: dict[str, MetricsSeries] = {}
        self.skipped = 0
        self._codec = AvroCodec(load_schema("metrics_report"))
        self._reader: PartitionReader | None = None
        self._lock = asyncio.Lock()
        #: True once a refresh reached the high-water marks of both topics
        self.complete = False

    def ours(self, name: str) -> bool:
        return self._ours is not None and self._ours.fullmatch(name) is not None

    async def refresh(self, budget_s: float = 2.0) -> bool:
        """Read what was appended since the last call, for at most ``budget_s``; True if
        both topics were read up to their high-water marks."""
        async with self._lock:
            try:
                self.complete = await self._read(budget_s)
            except Exception as exc:  # noqa: BLE001 - the broker away, a fetch error: answer what we have
                log.warning("history feed: %r (answering with what was read so far)", exc)
                await self.close()
                self.complete = False
            return self.complete

    async def _read(self, budget_s: float) -> bool:
        reader = self._reader
        if reader is None:
            reader = PartitionReader(self.broker, [self.history, self.metrics])
            async with asyncio.timeout(budget_s + 5):
                await reader.__aenter__()
            self._reader = reader
        deadline = time.monotonic() + budget_s
        started_ms = int(time.time() * 1000)
        # a fresh fetch response for both: a high-water mark can be stale (see
        # PartitionReader.fetched_since)
        while not (reader.fetched_since(started_ms) and await reader.caught_up()):
            if time.monotonic() > deadline:
                return False
            fetched = await reader.fetch(100)
            for record in fetched.get(self.history, []):
                self._history_record(record)
            for record in fetched.get(self.metrics, []):
                self._metrics_record(record)
        return True

    def _history_record(self, record: Any) -> None:
        key = record.key
        try:
            name = key.decode() if key is not None else ""
        except UnicodeDecodeError:
            name = ""
        if not self.ours(name):
            self.skipped += 1
            return
        try:
            event = decode_record(record.value, record.offset, record.headers,
                                  self.record_key, examples=False)
        except DecodeError:
            self.skipped += 1
            return
        if event.model != name:
            self.skipped += 1
            return
        summary = self.summaries.get(name)
        if summary is None:
            summary = self.summaries[name] = HistorySummary(name, self.max_entries,
                                                            verify=self.verify)
        summary.apply(event)

    def _metrics_record(self, record: Any) -> None:
        try:
            report = self._codec.decode(record.value or b"")
        except Exception:  # noqa: BLE001 - telemetry from anyone: skip what does not decode
            self.skipped += 1
            return
        name = report.get("model")
        if not isinstance(name, str) or not self.ours(name):
            self.skipped += 1
            return
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = MetricsSeries(self.max_points)
        series.add(report)

    async def close(self) -> None:
        """Stop the reader (the next refresh starts over: from scratch)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.__aexit__(None, None, None)
            self.summaries.clear()
            self.series.clear()
