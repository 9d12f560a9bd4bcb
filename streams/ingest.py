"""Batch ingest: consume a topic with aiokafka ``getmany`` and hand whole batches to an agent.

A :class:`BatchIngest` is a mode Service started with the Faust app. Each fetched batch
becomes ONE item on a bounded ``asyncio.Queue`` (backpressure: fetching waits while the
agent is behind), so any per-item cost is paid per batch rather than per event. Not a
Faust channel: Faust clears every channel's queue when its own consumer group rebalances
(flow control), which silently dropped batches the consumer had already moved past. The
agent calls :meth:`BatchIngest.done` once everything a batch produced is acknowledged; offsets are
committed only up to batches that are done (periodically, on revoke and on stop).

Delivery guarantee: at-least-once. A crash or rebalance re-delivers batches that
were not done; a batch from a partition revoked while in flight is finished but not
committed (the new owner processes it again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from riverbed.streams.config import Settings
from riverbed.streams.kafka_clients import client_options
from riverbed.streams.offsets import OffsetTracker
from riverbed.streams.unreadable import fetch_readable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Batch:
    """Records fetched in one ``getmany``, in partition order, and where to resume."""

    records: list[Any]
    next_offsets: dict[TopicPartition, int]
    generation: int


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: BatchIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.ingest.commit_done(only=set(revoked))
        self.ingest.offsets.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.ingest.note_start_positions(assigned)
        if assigned:
            self.ingest.assigned.set()
        if self.ingest.on_assign is not None:  # fetching waits for it (e.g. model takeover)
            await self.ingest.on_assign(self.ingest.assigned_partitions())
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class BatchIngest(Service):
    """Consumes ``topics`` in ``settings.worker.group_id`` and puts batches on ``queue``."""

    def __init__(
        self, settings: Settings, topics: Sequence[str], queue: asyncio.Queue[Batch],
        on_assign: Callable[[set[int]], Awaitable[None]] | None = None,
        progress: dict[str, dict[str, int | None]] | None = None,
        may_commit: Callable[[], bool] | None = None, **kwargs: Any,
    ) -> None:
        self.settings = settings
        #: exactly-once: offsets commit inside each batch's transaction, never from here
        self.transactional = settings.worker.processing_guarantee == "exactly_once"
        #: asked before every commit: a worker that lost its models' epoch must not commit
        self.may_commit = may_commit
        self._refused_commit = False
        #: awaited with the assigned partition numbers after every rebalance (aiokafka
        #: may already fetch the new partitions meanwhile; the worker's model lock keeps
        #: their batches from being processed until it returns)
        self.on_assign = on_assign
        self.topic_names = list(topics)
        self.queue = queue
        #: 'topic:partition' -> next offset fetched and high-water mark (WorkerStats.inputs)
        self.progress: dict[str, dict[str, int | None]] = {} if progress is None else progress
        self.consumer: AIOKafkaConsumer | None = None
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        #: Positions of a rewind, applied by the fetch loop (see :meth:`rewind`).
        self._seek_to: dict[TopicPartition, int] | None = None
        #: where fetching (re)started per partition: the committed offset (else the log
        #: start) at assignment, or a rewind's position -- lag before the first batch
        self._start_positions: dict[TopicPartition, int] = {}
        #: Set once this worker owns at least one partition (group join done).
        self.assigned = asyncio.Event()
        super().__init__(**kwargs)

    def _make_consumer(self) -> AIOKafkaConsumer:
        w, limits = self.settings.worker, self.settings.limits
        return AIOKafkaConsumer(
            **client_options(self.settings.broker),
            group_id=w.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=w.effective_fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=w.session_timeout_ms,
            heartbeat_interval_ms=w.heartbeat_interval_ms,
            max_poll_records=limits.max_batch_records,
            # range keeps equal partition numbers of co-partitioned topics together
            partition_assignment_strategy=(RangePartitionAssignor,),
            # exactly-once: never learn from an upstream transaction that was aborted
            isolation_level="read_committed" if self.transactional else "read_uncommitted",
        )

    async def on_start(self) -> None:
        self.consumer = self._make_consumer()
        await self.consumer.start()
        self.consumer.subscribe(self.topic_names, listener=_Listener(self))

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.commit_done()
            await self.consumer.stop()

    @Service.task
    async def _fetch_batches(self) -> None:
        assert self.consumer is not None
        max_records = self.settings.limits.max_batch_records
        while not self.should_stop:
            self._apply_seeks()
            try:
                fetched, unreadable = await fetch_readable(self.consumer, 500, max_records)
            except KafkaError as exc:  # transient broker trouble: log and fetch again
                log.warning("fetch failed: %r", exc)
                await self.sleep(0.5)
                continue
            if self._apply_seeks() or not (fetched or unreadable):
                continue  # a rewind came while fetching: these records come again
            for record in unreadable:  # where it was: the agent dead-letters it
                fetched.setdefault(TopicPartition(record.topic, record.partition), []
                                   ).append(record)
            records: list[Any] = []
            next_offsets = {}
            for tp, part in fetched.items():
                records.extend(part)
                next_offsets[tp] = part[-1].offset + 1
                self.progress[f"{tp.topic}:{tp.partition}"] = {
                    "fetched": next_offsets[tp], "highwater": self.consumer.highwater(tp)}
            await self.queue.put(Batch(records, next_offsets, self.offsets.generation))

    @Service.task
    async def _commit_periodically(self) -> None:
        interval = self.settings.worker.commit_interval_s
        while not self.should_stop:
            await self.sleep(interval)
            await self.commit_done()

    def done(self, batch: Batch) -> None:
        """Mark ``batch`` fully processed: its offsets may be committed."""
        self.offsets.done(batch.next_offsets, batch.generation)

    def assigned_partitions(self) -> set[int]:
        """Partition numbers currently assigned (of any input topic)."""
        return {tp.partition for tp in self.consumer.assignment()} if self.consumer else set()

    async def rewind(self, position_of: Any) -> None:
        """Void in-flight batches and seek every assigned partition to ``position_of(tp)``
        (an offset, or None to resume from the committed offset, else the beginning).

        The batches already fetched are void at once (new generation); the seeks are
        applied by the fetch loop between two fetches, because a fetch under way when we
        seek may still return records from the old position and advance past the new one.
        """
        assert self.consumer is not None
        positions = {}
        for tp in self.consumer.assignment():
            position = position_of(tp)
            if position is None:
                position = await self.consumer.committed(tp)
            # offset 0 below the log start resets to the earliest (auto_offset_reset)
            positions[tp] = 0 if position is None else position
        self._seek_to = positions
        self._start_positions.update(positions)
        self.offsets.revoke(positions)

    async def note_start_positions(self, assigned: Collection[TopicPartition]) -> None:
        """Remember where fetching starts on newly assigned partitions (for :meth:`lag`)."""
        if self.consumer is None or not assigned:
            return
        try:
            committed = {tp: await self.consumer.committed(tp) for tp in assigned}
            missing = [tp for tp, offset in committed.items() if offset is None]
            starts = await self.consumer.beginning_offsets(missing) if missing else {}
        except KafkaError as exc:  # lag is telemetry: unknown until the first batch
            log.warning("start positions unknown (%r); lag shown after the first batch", exc)
            return
        for tp, offset in committed.items():
            position = offset if offset is not None else starts.get(tp)
            if position is not None:
                self._start_positions[tp] = position

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: high-water mark minus the confirmed position (before
        the first confirmed batch: minus where fetching started)."""
        lags: dict[TopicPartition, int] = {}
        if self.consumer is None:
            return lags
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = self.offsets.position(tp)
            if position is None:
                position = self._start_positions.get(tp)
            if highwater is not None and position is not None:
                lags[tp] = max(0, highwater - position)
        return lags

    def _apply_seeks(self) -> bool:
        """Apply a pending rewind (see :meth:`rewind`); True if there was one."""
        positions, self._seek_to = self._seek_to, None
        if positions is None or self.consumer is None:
            return False
        assigned = self.consumer.assignment()
        for tp, position in positions.items():
            if tp in assigned:  # a rebalance may have come meanwhile
                self.consumer.seek(tp, position)
        return True

    async def commit_done(self, only: set[TopicPartition] | None = None) -> None:
        """Commit offsets of done batches (optionally only for ``only`` partitions). Under
        exactly-once the batches' transactions commit the offsets instead."""
        if self.consumer is None or self.transactional:
            return
        pending = self.offsets.to_commit(only)
        if not pending:
            return
        if self.may_commit is not None and not self.may_commit():
            if not self._refused_commit:
                log.warning("not committing input offsets: this worker does not hold its "
                            "models' current epoch (the next owner resumes from the history)")
            self._refused_commit = True
            return
        self._refused_commit = False
        try:
            await self.consumer.commit(pending)
            self.offsets.committed(pending)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit failed (batches will be re-delivered): %r", exc)

