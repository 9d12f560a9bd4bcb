"""The training path of scaled-out global models (``worker.scale_out = "replicas"``).

Every worker predicts with a replica and sends its labelled examples to
``topics.training`` (:class:`TrainingPublisher`); the worker holding the lease
(``streams/lease.py``) runs one :class:`TrainingLoop` per global model: the model's single
learner.

Delivery guarantee: **exactly-once learning effect**, without transactions. A replica
sends a batch's training records and waits for their acks before the batch's input
offsets may be committed (``agents/batch_agent.py``), so every labelled example reaches
the training topic at least once (a crash re-sends it, with the same ``event_id``). The
learner's loop, per fetch of the model's training partition:

  1. Under the model lock: skip records below the training offset the history covers
     (re-read after a takeover), and examples whose ``event_id`` the history's window (or
     this fetch) already holds (re-sent by a replica); learn the rest in record order and
     build ``Learned`` (training offsets after the fetch, the examples) and, on cadence,
     a snapshot.
  2. Append them to the history and wait for the ack; mark them durable.

Why this order: the history is the only record of what was learned; the training
topic's offsets live in it (no consumer-group commit), so a learner that dies between 1
and 2 has learned nothing durable, and its successor (new epoch) reads the same records
again. A fenced learner's appends are ignored by every fold (``streams/history.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from riverbed.agents.learner import Learner
from riverbed.schemas import load_schema
from riverbed.streams.config import Settings
from riverbed.streams.errors import DecodeError, ValidationError
from riverbed.streams.features import FeatureExtractor, check_event_id
from riverbed.streams.history import Example, HistoryEvent
from riverbed.streams.kafka_clients import FOLLOW_WAIT_MS, PartitionReader, Record
from riverbed.streams.output import BatchProducer
from riverbed.streams.replica_state import encode_state
from riverbed.streams.telemetry import WorkerStats
from riverbed.streams.training import (
    TrainingBatch,
    decode_training,
    encode_training,
    training_partition,
)

log = logging.getLogger(__name__)


#: Training records learned in one step (under the model lock, without yielding) hold at
#: most about this many bytes: a learner taking over a backlog fetched up to 200 records of
#: up to limits.max_batch_records examples each and learned them in one go, which blocked
#: its event loop for seconds (its web pages and group heartbeats with it). ~2,000 examples
#: of the demo's schema; between steps the history append yields.
LEARN_CHUNK_BYTES = 512 * 1024


def chunked(records: Sequence[Record], max_bytes: int) -> list[Sequence[Record]]:
    """Consecutive runs of ``records`` of at most ``max_bytes`` of values (one record at
    least per run).

    >>> R = type("R", (), {})
    >>> rs = [R() for _ in range(5)]
    >>> for r, n in zip(rs, (3, 3, 3, 9, 1)): r.value = b"x" * n
    >>> [len(c) for c in chunked(rs, 6)]
    [2, 1, 1, 1]
    """
    runs: list[Sequence[Record]] = []
    start, size = 0, 0
    for i, record in enumerate(records):
        length = len(record.value or b"")
        if i > start and size + length > max_bytes:
            runs.append(records[start:i])
            start, size = i, 0
        size += length
    if start < len(records):
        runs.append(records[start:])
    return runs


class TrainingPublisher:
    """Sends a worker's training records (keyed by model, to the model's partition)."""

    def __init__(self, settings: Settings, producer: BatchProducer) -> None:
        self.topic = settings.topics.training
        self.state_topic = settings.topics.replica_state
        self.partitions = settings.topics.partitions
        self.producer = producer

    async def publish(self, batches: Sequence[TrainingBatch]) -> None:
        """Send ``batches`` and wait until the broker acknowledged every one."""
        kafka = self.producer.producer
        assert kafka is not None, "producer not started"
        futures = [await kafka.send(self.topic, value=encode_training(b), key=b.model.encode(),
                                    partition=training_partition(b.model, self.partitions))
                   for b in batches]
        await asyncio.gather(*futures)

    async def publish_state(self, model: str, values: Sequence[bytes]) -> None:
        """Send one model state's records (``streams/replica_state.py``) and wait for
        their acks."""
        key = model.encode()
        await asyncio.gather(*await self.producer.publish(self.state_topic, 0,
                                                          [(key, v) for v in values]))


class TrainingLoop:
    """The single learner of one global model: learns its training partition."""

    def __init__(self, settings: Settings, learner: Learner, lock: asyncio.Lock,
                 stats: WorkerStats, publisher: TrainingPublisher | None = None) -> None:
        self.settings, self.learner, self.lock, self.stats = settings, learner, lock, stats
        #: replica_catch_up = "state": where this learner publishes the model's states
        spec = learner.model.spec
        self.publisher = publisher if spec.replica_catch_up == "state" else None
        self.state_every_steps = spec.replica_state_every_steps
        self.state_every_s = spec.replica_state_every_s
        self._state_seq = learner.model.seq
        self._state_time = time.monotonic()
        t = settings.topics
        self.tp = TopicPartition(t.training, training_partition(learner.model.name,
                                                                t.partitions))
        #: the source under which Learned records carry the training offsets
        self.source = f"{self.tp.topic}:{self.tp.partition}"
        #: training records that did not decode (skipped and counted)
        self.skipped_records = 0
        #: examples refused by the model's feature and label rules (skipped and counted):
        #: the training topic is read like any input -- nothing reaches learn_one unchecked
        self.invalid_examples = 0
        self._stopping = False
        model = learner.model
        self.extractor = FeatureExtractor(
            load_schema(settings.event.schema, settings.base_dir), settings.event, model.spec,
            settings.limits, binary=model.is_binary)
        self.max_id_length = settings.limits.max_event_id_length

    def stop(self) -> None:
        """Ask :meth:`run` to return after the fetch in hand is learned and appended (the
        model moves to another learner: what this one learned is in the history)."""
        self._stopping = True

    async def run(self) -> None:
        """Learn until :meth:`stop` (or cancelled); re-reads from the history's position
        after a retake (a rollback gives the learner a new epoch and state)."""
        while not self._stopping:
            if self.learner.fenced:  # claimed elsewhere: released or retaken shortly
                await asyncio.sleep(0.05)
                continue
            epoch = self.learner.epoch
            start = {self.tp: self.learner.fold.applied_offset(self.source)}
            async with PartitionReader(self.settings.broker, [self.tp], start=start,
                                       fetch_max_wait_ms=FOLLOW_WAIT_MS) as reader:
                while self.learner.epoch == epoch and not self._stopping:
                    records = (await reader.fetch(200)).get(self.tp, [])
                    if not records:
                        await self._publish_state_if_due()  # the last steps of a lull
                        continue
                    if not await self._learn_fetch(records, epoch):
                        break  # a new epoch or a newer claim: re-read from the history

    async def _learn_fetch(self, records: Sequence[Record], epoch: int) -> bool:
        """Steps 1 and 2 for one fetch, in runs of at most LEARN_CHUNK_BYTES; False (the
        rest unlearned) once the learner is no longer ``epoch``'s or was fenced."""
        for chunk in chunked(records, LEARN_CHUNK_BYTES):
            async with self.lock:  # no batch predicts while the model changes
                if self.learner.epoch != epoch or self.learner.fenced:
                    return False
                events = self.learn(chunk)                                          # 1.
            offsets = await self.learner.history.append(events)                     # 2.
            await self.learner.publish_index(events, offsets)
            self.learner.mark_durable(events)
            await self._publish_state_if_due()
        return True

    async def _publish_state_if_due(self) -> None:
        """replica_catch_up = "state": publish the model every N steps / T seconds, once
        the Learned records up to its seq are acknowledged (a replica loads a state only
        when the history vouches for it: ``agents/replica.py``)."""
        learner = self.learner
        steps = learner.fold.seq - self._state_seq
        if self.publisher is None or steps <= 0 or (
                steps < self.state_every_steps
                and time.monotonic() - self._state_time < self.state_every_s):
            return
        async with self.lock:  # the estimator is pickled as of the seq it says
            if learner.fenced or learner.durable_seq != learner.fold.seq:
                return
            fold = learner.fold
            values = encode_state(learner.model.estimator, learner.key,
                                  model=learner.model.name, epoch=learner.epoch, seq=fold.seq,
                                  lineage=fold.lineage, fingerprint=fold.fingerprint or "",
                                  time_ms=int(time.time() * 1000))
            self._state_seq, self._state_time = fold.seq, time.monotonic()
        await self.publisher.publish_state(learner.model.name, values)

    def learn(self, records: Sequence[Record]) -> list[HistoryEvent]:
        """Step 1 for one fetch: learn what is new, return the history events. A fetch can
        hold a backlog (a learner taking over reads everything the replicas sent
        meanwhile), so the examples are split into ``Learned`` records of at most
        ``limits.max_batch_records`` each, like the inference path's: one record for the
        whole fetch could exceed the broker's message size (``MessageSizeTooLarge``)."""
        learner, model = self.learner, self.learner.model
        name = model.name
        limit = self.settings.limits.max_batch_records
        seq_before = model.seq
        covered = learner.fold.applied_offset(self.source)
        seen: set[str] = set()
        examples: list[Example] = []
        events: list[HistoryEvent] = []
        learned = 0
        for record in records:
            if record.offset < covered:
                learner.skipped_replayed += 1
                continue
            if record.key != name.encode():
                continue  # another model's examples on a shared partition
            try:
                batch = decode_training(record.value or b"")
            except DecodeError:
                self.skipped_records += 1
                continue
            if examples and len(examples) + len(batch.examples) > limit:
                events += learner.record_batch(seq_before, examples,  # covers the records
                                               {self.source: record.offset})  # before this one
                learned += len(examples)
                seq_before, examples = model.seq, []
            for example in batch.examples:
                if example.event_id in seen or learner.fold.seen(example.event_id):
                    learner.skipped_duplicates += 1
                    continue
                try:  # before learn_one: River mutates a model before it raises
                    check_event_id(example.event_id, self.max_id_length)
                    self.extractor.check_features(example.x)
                    y = self.extractor.label_rule.check(example.y)
                except ValidationError as exc:
                    self.invalid_examples += 1
                    log.warning("%s: training example %r refused: %s", name,
                                example.event_id, exc)
                    continue
                seen.add(example.event_id)
                model.learn(dict(example.x), y)
                examples.append(example._replace(y=y))
        events += learner.record_batch(seq_before, examples,
                                       {self.source: records[-1].offset + 1})
        learned += len(examples)
        if learner.snapshot_due():
            events += learner.snapshot_events()
        self.stats.learned[name] += learned
        self.stats.model_seq[name] = model.seq
        return events
