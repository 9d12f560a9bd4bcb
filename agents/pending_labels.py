"""The pending-label store's lifecycle inside a worker: rebuilt, persisted, expired.

The join rules live in ``agents/labels.py`` (pure); this module does their I/O. Delivery
guarantee: a batch's new pending entries are appended to ``riverbed.pending`` (and
acknowledged) after the batch's outputs and before its history record, so every entry a
``Learned`` record's low-water mark points past is on the log; a restart or takeover
rebuilds the store from that log minus what the history shows as learned
(:meth:`PendingLabels.rebuild`). Expiry is at-least-once: after a crash an orphan label
may be dead-lettered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence

from riverbed.agents.batch import BatchOutput
from riverbed.agents.labels import LabelJoin, pending_log_start
from riverbed.streams.config import Settings
from riverbed.streams.history import HistoryFold
from riverbed.streams.kafka_clients import read_to_end
from riverbed.streams.output import BatchProducer
from riverbed.streams.telemetry import WorkerStats

log = logging.getLogger(__name__)


class PendingLabels:
    """Keeps one worker's :class:`LabelJoin` store in step with ``riverbed.pending``."""

    def __init__(self, settings: Settings, join: LabelJoin, output: BatchProducer,
                 stats: WorkerStats, control: BatchProducer | None = None) -> None:
        self.settings, self.join, self.output, self.stats = settings, join, output, stats
        #: writes outside a batch (expiry): the batch producer is transactional under
        #: exactly-once, and every send of it must belong to a batch's transaction
        self.control = control or output

    async def rebuild(self, folds: Sequence[HistoryFold], *,
                      partitions: Collection[int] | None = None,
                      models: Collection[str] = ()) -> int:
        """Rebuild the store for the models of ``folds`` from the pending log, read from
        the lowest low-water mark their histories carry; entries any of them learned are
        dropped. With ``partitions``, only add the entries of those partitions (a
        per-partition takeover: see :meth:`LabelJoin.rebuild`). Returns entries added."""
        s = self.settings
        start = pending_log_start(self.join.log_source, folds)
        added = await self.join.rebuild(
            read_to_end(s.broker, s.topics.pending, start),
            lambda eid: any(fold.seen(eid) for fold in folds),
            int(time.time() * 1000), start=start, partitions=partitions, models=models)
        log.info("pending log: %d records read from offset %d, %d entries kept",
                 self.join.records_read, start, added)
        return added

    async def persist(self, result: BatchOutput, via: BatchProducer | None = None) -> None:
        """Append a batch's new pending entries (if any) and wait for the ack."""
        if result.pending is None:
            return
        producer = (via or self.output).producer
        assert producer is not None, "producer not started"
        sent = await (await producer.send(self.settings.topics.pending,
                                          value=result.pending, partition=0))
        self.join.appended(sent.offset, result.pending_ids)

    async def expire(self, guard: asyncio.Lock) -> BatchOutput:
        """Expire entries even when no records arrive: orphan labels are dead-lettered
        (and acknowledged) here; returns what expiry produced (its ``pending`` part is
        persisted already)."""
        out = BatchOutput()
        if not self.stats.broker_connected:
            return out  # expire once the broker is back (orphan labels must reach the DLQ)
        async with guard:
            self.join.end_batch(out, int(time.time() * 1000))
        if out.dead_letters:
            for dead in out.dead_letters:
                self.stats.dead_letters[dead.reason] += 1
            await asyncio.gather(*await self.control.publish_dead_letters(
                self.settings.topics.dead_letters, out.dead_letters))
        await self.persist(out, self.control)
        return out
