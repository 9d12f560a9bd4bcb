"""The inference agent's tasks: process fetched batches, publish, confirm in order.

Delivery guarantee: at-least-once outputs, exactly-once learning. A batch's outputs are
acknowledged (``acks=all``) before its history records are appended, and its input
offsets are marked done only after both (the learner's batch protocol, see
``agents/learner.py``); a failed publish or append crashes the worker without committing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka.errors import ProducerFenced

from riverbed.agents.batch import BatchLearner, BatchOutput
from riverbed.agents.inference import InferenceProcessor
from riverbed.streams.config import Settings
from riverbed.streams.errors import LeaseLostError, OwnershipError, RiverbedError
from riverbed.streams.history import HistoryEvent
from riverbed.streams.output import retrieve

Hook = Callable[[], Awaitable[None]]
OutputHook = Callable[[BatchOutput], Awaitable[None]]
RecordsHook = Callable[[Sequence[Any]], Awaitable[None]]
StopHook = Callable[[BaseException], Awaitable[None]]


async def append_history(results: Sequence[BatchOutput], via: Any = None,
                         durable: bool = True) -> list[tuple[BatchLearner, list[HistoryEvent]]]:
    """Append the history records of ``results`` (in batch order) in one round trip, then
    point the snapshot index at new snapshots; mark the records durable (unless
    ``durable`` is False: inside a transaction they are durable once it commits). Returns
    what was appended, per learner. ``via``: the transactional producer."""
    pairs = [(learner, events) for result in results for learner, events in result.history]
    if not pairs:
        return pairs
    offsets = await pairs[0][0].history.append([e for _, events in pairs for e in events],
                                               via)
    position = 0
    for learner, events in pairs:
        mine = offsets[position : position + len(events)]
        position += len(events)
        await learner.publish_index(events, mine, via)
        if durable:
            learner.mark_durable(events)
    return pairs


class InferenceAgent:
    """Two Faust tasks around one :class:`InferenceProcessor`: ``process_batches`` reads
    ``batches`` (an ``asyncio.Queue`` filled by :class:`riverbed.streams.ingest.BatchIngest`),
    processes each under the model lock and publishes its outputs; ``confirm_in_order``
    awaits the acks, in batch order, so the next batch is processed while the broker
    acknowledges the previous one. ``ingest.done`` is called strictly in order, and a
    failed publish crashes the worker (nothing is committed past it, so a restart
    re-processes it)."""

    def __init__(
        self, app: Any, batches: asyncio.Queue[Any], processor: InferenceProcessor,
        output: Any, ingest: Any, settings: Settings, before_batch: Hook | None = None,
        guard: asyncio.Lock | None = None, after_outputs: OutputHook | None = None,
        resolve_schemas: RecordsHook | None = None, stop: StopHook | None = None,
    ) -> None:
        self.app, self.batches, self.processor = app, batches, processor
        self.output, self.ingest, self.topics = output, ingest, settings.topics
        #: run under the lock before each batch (e.g. take over again after being fenced)
        self.before_batch = before_batch
        self.lock = guard or asyncio.Lock()
        #: run between a batch's acks and its history append (pending log, drift reports)
        self.after_outputs = after_outputs
        #: awaited with each batch's records before it is processed: the registry prefetch
        #: (streams/registry.py); it waits out a registry outage, the batch with it
        self.resolve_schemas = resolve_schemas
        #: stops the worker for what retrying cannot fix (default: the Faust app's crash)
        self.stop = stop or app.crash
        #: exactly-once: each group of batches commits in one Kafka transaction with its
        #: input offsets (in the inputs' consumer group), instead of acks then commit
        self.transactional = settings.worker.processing_guarantee == "exactly_once"
        self.group_id = settings.worker.group_id
        #: processed batches waiting for their acks and history append: bounded, so the
        #: live model never runs more than this many batches ahead of its durable history
        self.pending: asyncio.Queue[tuple[list[Any], BatchOutput, Any]] = asyncio.Queue(
            settings.worker.max_unconfirmed_batches)

    def register(self) -> None:
        """Run both tasks with the Faust app (started and stopped with it)."""
        self.app.task(self.process_batches)
        self.app.task(self.confirm_in_order)

    async def process_batches(self) -> None:
        """Step 1 of the learner's batch protocol (agents/learner.py): process, publish."""
        while True:
            batch = await self.batches.get()
            if self.resolve_schemas is not None:
                try:
                    await self.resolve_schemas(batch.records)
                except RiverbedError as exc:  # what waiting cannot fix (credentials, TLS)
                    await self.stop(exc)
                    return
            async with self.lock:  # models are not touched by anyone else meanwhile
                if self.before_batch is not None:
                    await self.before_batch()
                if batch.generation != self.ingest.offsets.generation:
                    continue  # fetched before a rewind/revoke: it will be fetched again
                result = self.processor.process(batch.records)
            if result.unowned:  # never commit records that no model learned: stop loudly
                await self.app.crash(OwnershipError(
                    f"records of {sorted(result.unowned)} reached a worker serving no model "
                    "for them; stopping without committing them"))
                return
            futures = [] if self.transactional else await self._publish(result)
            await self.pending.put((futures, result, batch))

    async def _publish(self, result: BatchOutput) -> list[Any]:
        """Send a batch's predictions and dead letters; futures of their acks."""
        futures: list[Any] = []
        for partition, records in result.predictions.items():
            futures += await self.output.publish(self.topics.predictions, partition, records)
        if result.dead_letters:
            futures += await self.output.publish_dead_letters(
                self.topics.dead_letters, result.dead_letters)
        return futures

    async def confirm_in_order(self) -> None:
        """Steps 2-4 of the batch protocol, for every batch waiting here at once: one
        round trip for their outputs' acks and one for their history records, however
        many batches queued up behind a slow ack."""
        while True:
            items = [await self.pending.get()]
            while not self.pending.empty() and len(items) < 16:
                items.append(self.pending.get_nowait())
            try:
                if self.transactional:
                    await self._commit_transaction(items)
                    continue
                await asyncio.gather(*(f for futures, _, _ in items for f in futures))  # 2.
                for _, result, _ in items:
                    if self.after_outputs is not None:
                        await self.after_outputs(result)
                await append_history([result for _, result, _ in items])              # 3.
            except ProducerFenced:  # exactly-once: a newer worker started; nothing of ours
                await self.stop(LeaseLostError(  # after that is committed
                    "another worker took over (this worker's transactional producer was "
                    "fenced); stopping: its open transaction is aborted, nothing committed"))
                return
            except Exception as exc:  # the broker refused our output: stop, do not commit
                await self.app.crash(exc)
                return
            for _, _, batch in items:
                self.ingest.done(batch)                                             # 4.

    async def _commit_transaction(self, items: list[tuple[list[Any], BatchOutput, Any]]
                                  ) -> None:
        """Exactly-once: the batches' predictions, dead letters, pending-log records,
        history records, snapshot-index entries and input offsets in ONE transaction. A
        crash or a fence before the commit aborts all of it; the next owner folds only
        committed history (read_committed) and resumes from the committed offsets."""
        producer = self.output.producer
        await producer.begin_transaction()
        futures: list[Any] = []
        try:
            for _, result, _ in items:
                futures += await self._publish(result)
            for outcome in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(outcome, BaseException):  # every future retrieved, first raised
                    raise outcome
            for _, result, _ in items:
                if self.after_outputs is not None:
                    await self.after_outputs(result)
            appended = await append_history([result for _, result, _ in items], producer,
                                            durable=False)
            offsets: dict[Any, int] = {}
            for _, _, batch in items:
                if batch.generation == self.ingest.offsets.generation:  # not void (rewind)
                    for tp, offset in batch.next_offsets.items():
                        offsets[tp] = max(offset, offsets.get(tp, 0))
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group_id)
            await producer.commit_transaction()
        except BaseException:
            for future in futures:  # outcomes nobody awaits any more: retrieved, not logged
                future.add_done_callback(retrieve)
            with contextlib.suppress(Exception):  # fenced or broken: the broker aborts it
                await producer.abort_transaction()
            raise
        for learner, events in appended:
            learner.mark_durable(events)
        for _, _, batch in items:
            self.ingest.done(batch)
