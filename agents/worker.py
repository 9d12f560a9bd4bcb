"""A riverbed worker: one Faust app with the batch ingest, the producer and the agents.

Start it with :meth:`Worker.run` (or ``riverbed worker -c CONFIG``). It provisions its
topics (idempotent) before any client touches them, then starts Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from riverbed.agents.batch_agent import InferenceAgent
from riverbed.agents.inference import BatchOutput, InferenceProcessor
from riverbed.agents.labels import LabelJoin, pending_log_start
from riverbed.agents.learner import ROLLBACK_OWNER, Learner
from riverbed.agents.reporter import Reporter
from riverbed.agents.runtime import ClientLogLimiter, dump_tasks, tune_gc
from riverbed.agents.supervision import BrokerWatch, Supervisor
from riverbed.agents.web import WebApi, worker_port
from riverbed.schemas import load_schema
from riverbed.streams.app import make_faust_app
from riverbed.streams.codec import HttpSchemaRegistry, SchemaRegistry, make_codec
from riverbed.streams.config import Settings
from riverbed.streams.errors import (
    BrokerUnavailableError,
    DecodeError,
    LeaseLostError,
    RiverbedError,
    TakeoverError,
)
from riverbed.streams.history import Claimed, Restored
from riverbed.streams.history_log import HistoryLog, SnapshotIndex, read_partition
from riverbed.streams.ingest import Batch, BatchIngest
from riverbed.streams.lease import Lease
from riverbed.streams.models import OnlineModel
from riverbed.streams.output import BatchProducer
from riverbed.streams.snapshots import fingerprint, snapshot_key
from riverbed.streams.telemetry import WorkerStats
from riverbed.streams.topics import ensure_topics, riverbed_topics

log = logging.getLogger(__name__)


def shard_name(model: str, partition: int) -> str:
    """The name of ``model``'s instance for one input partition (model_per_partition)."""
    return f"{model}@p{partition}"


class Worker:
    """Everything one worker process runs; built from :class:`Settings`."""

    def __init__(
        self, settings: Settings, web_port: int | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        if registry is None and settings.broker.schema_registry_url:
            registry = HttpSchemaRegistry(settings.broker.schema_registry_url)
        event_schema = load_schema(settings.event.schema, settings.base_dir)
        topics = settings.topics
        self.per_partition = settings.worker.model_per_partition
        self.output = BatchProducer(settings.broker.bootstrap_servers,
                                    request_timeout_s=settings.broker.reconnect_timeout_s + 10)
        #: keeps aiokafka/Faust from logging every failed attempt while the broker is away
        self.log_limiter = ClientLogLimiter()
        self._history: tuple[HistoryLog, SnapshotIndex, bytes] | None = None
        models = [] if self.per_partition else [OnlineModel(spec) for spec in settings.models]
        learners = [self._learner(m) for m in models] if settings.history.enabled else None
        self.join = LabelJoin(settings, registry) if settings.labels.enabled else None
        self.processor = InferenceProcessor(
            settings, event_schema, join=self.join,
            decoder=make_codec(event_schema, f"{topics.events}-value", registry),
            prediction_encoder=make_codec(
                load_schema("prediction"), f"{topics.predictions}-value", registry),
            models=models, stats=self.stats, learners=learners,
        )
        self.reporter = Reporter(self)
        self._faust_dir = tempfile.TemporaryDirectory(prefix="riverbed-faust-")
        self.app = make_faust_app(settings, self.stats, Path(self._faust_dir.name), web_port,
                                  [self.reporter.families])
        self.batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=4)  # see streams/ingest.py
        inputs = [topics.events] + ([topics.labels] if self.join is not None else [])
        self.ingest = BatchIngest(settings, inputs, self.batches, on_assign=self._assigned,
                                  progress=self.stats.inputs, may_commit=self._may_commit)
        #: the global models' single-writer lease (None with per-partition models)
        self.lease = None if self.per_partition else Lease(settings)
        self.model_lock = asyncio.Lock()
        #: background tasks that must never die silently (agents/supervision.py)
        self.supervisor = Supervisor(self.app.crash)
        self.broker_watch = BrokerWatch(settings, self.stats, self.log_limiter,
                                        self.ingest.assigned.is_set)
        InferenceAgent(
            self.app, self.batches, self.processor, self.output, self.ingest, settings,
            before_batch=self.before_batch, guard=self.model_lock,
            after_outputs=self._after_outputs,
        ).register()
        self._register_timers_and_pages()
        WebApi(worker_port(self), self.app).register()  # the HTTP API and page (agents/web.py)
        self._follower: asyncio.Task[None] | None = None
        self._crash: asyncio.Future[None] | None = None
        #: Set by every rebalance: the inputs are sought to the history before any batch.
        self._resume_from_history = False
        self._resume: asyncio.Future[None] | None = None

    def _register_timers_and_pages(self) -> None:
        @self.app.timer(self.settings.labels.report_interval_s)
        async def report_metrics() -> None:
            await self.reporter.publish()

        @self.app.timer(1.0)
        async def expire_pending() -> None:
            await self.expire_pending()

        @self.app.page("/riverbed/models")
        async def models_page(web: Any, request: Any) -> Any:
            return web.json(self.describe_models())

    @property
    def models(self) -> list[OnlineModel]:
        """The models this worker serves now (per-partition ones come and go)."""
        return self.processor.models

    @property
    def learners(self) -> list[Learner]:
        """The learners of :attr:`models` (empty when the history is disabled)."""
        return [lr for lr in self.processor.learners if lr is not None]

    def describe_models(self) -> dict[str, Any]:
        """Live seq, lineage, epoch and fingerprint of every model."""
        described = {}
        for model, learner in zip(self.processor.models, self.processor.learners, strict=True):
            created = learner.fold.created if learner else None
            probe = created.probe if created else ()
            described[model.name] = {
                "seq": model.seq, "lineage": model.lineage,
                "durable_seq": learner.durable_seq if learner else None,
                "durable_offsets": dict(learner.durable_offsets) if learner else {},
                "pending": len(self.join.store.events) if self.join else 0,
                "pending_log": {"read_from": self.join.rebuilt_from,
                                "records_read": self.join.records_read,
                                "low_water": self.join.low_water()} if self.join else None,
                "fold_counters": vars(learner.fold.counters) if learner else None,
                "epoch": learner.epoch if learner else None,
                "fingerprint": fingerprint(model.estimator, probe) if created else None,
                "skipped_replayed": learner.skipped_replayed if learner else 0,
                "skipped_duplicates": learner.skipped_duplicates if learner else 0,
            }
        return described

    def _learner(self, model: OnlineModel) -> Learner:
        s = self.settings
        if self._history is None:
            self._history = (
                HistoryLog(s.broker.bootstrap_servers, s.topics.history, self.output),
                SnapshotIndex(s.broker.bootstrap_servers, s.topics.snapshots, self.output),
                snapshot_key(s))
        history, index, key = self._history
        h = s.history
        return Learner(model, history, index, key, snapshot_every_steps=h.snapshot_every_steps,
                       snapshot_every_s=h.snapshot_every_s, id_window=h.id_window,
                       probe_size=h.probe_size)

    async def _assigned(self, partitions: set[int]) -> None:
        """After a rebalance, before any batch of it is processed: with per-partition
        models, release the models of partitions now owned elsewhere and take over those
        newly assigned (their new owner's claim fences anything this worker still writes).
        A failed takeover stops the worker with a TakeoverError (nothing of those
        partitions is committed: see OwnershipError)."""
        self.stats.partitions = sorted(partitions)
        self._resume_from_history = True
        self._resume = self._supervise(self._resume_after_rebalance(), "resume")  # after lock
        if not self.per_partition:
            return
        try:
            await self._move_models(partitions)
        except Exception as exc:  # e.g. the history could not be read in time
            log.error("taking over partitions %s failed: %r", sorted(partitions), exc)
            # crash from outside aiokafka's rebalance callback (stopping the consumer
            # from inside it would wait on itself)
            self._crash = asyncio.ensure_future(self.app.crash(TakeoverError(
                f"taking over the models of partitions {sorted(partitions)} failed: {exc!r}")))

    async def _move_models(self, partitions: set[int]) -> None:
        """Release the models of partitions not in ``partitions``, take over the others."""
        async with self.model_lock:
            owned = {p for p in self.processor.partitions if p is not None}
            for partition in sorted(owned - partitions):
                removed = self.processor.remove_partition(partition)
                if self.join is not None:  # its pending entries are the new owner's now
                    self.join.release(partition, self._shard_names([partition]))
                log.info("released the models of partition %d (%d learners)", partition,
                         len(removed))
            gained = sorted(partitions - owned)
            learners = [lr for p in gained for lr in await self._take_partition(p)]
            if gained and self.join is not None:  # one read of the pending log for all
                added = await self._rebuild_pending(learners, partitions=gained,
                                                    models=self._shard_names(gained))
                log.info("partitions %s: %d pending entries taken over", gained, added)

    async def _rebuild_pending(self, learners: list[Learner], **only: Any) -> int:
        """Rebuild the pending store for ``learners`` from the pending log, read from the
        lowest low-water mark their histories carry (agents/labels.py)."""
        assert self.join is not None
        s = self.settings
        start = pending_log_start(self.join.log_source, learners)
        added = await self.join.rebuild(
            read_partition(s.broker.bootstrap_servers, s.topics.pending, start, None, 30.0),
            lambda eid: any(lr.fold.seen(eid) for lr in learners),
            int(time.time() * 1000), start=start, **only)
        log.info("pending log: %d records read from offset %d, %d entries kept",
                 self.join.records_read, start, added)
        return added

    def _shard_names(self, partitions: list[int]) -> set[str]:
        """Names of the per-partition models of ``partitions``."""
        return {shard_name(spec.name, p) for spec in self.settings.models for p in partitions}

    async def _take_partition(self, partition: int) -> list[Learner]:
        """Serve the per-partition models of ``partition`` (taking over their history);
        returns their learners."""
        learners: list[Learner] = []
        for spec in self.settings.models:
            model = OnlineModel(spec, name=shard_name(spec.name, partition))
            learner = self._learner(model) if self.settings.history.enabled else None
            if learner is not None:
                await learner.takeover()
                learners.append(learner)
            self.processor.add_model(model, learner, partition)
            self.stats.model_seq[model.name] = model.seq
            log.info("serving %s (partition %d)", model.name, partition)
        if self._follower is None and self.learners:
            self._follower = self._supervise(self._follow_history(), "history follower")
        return learners

    async def start(self) -> None:
        """Start in the order that makes a failed start harmless: provision topics, bind the
        web server, restore every model from its history (nothing written yet); then, for
        global models, wait as a *standby* until this worker holds the lease; only then
        claim the models (the first write), rebuild the pending labels and consume."""
        await ensure_topics(self.settings.broker.bootstrap_servers, riverbed_topics(self.settings))
        await self.output.start()
        await self.app.start()  # binds the web port: a port in use fails here, before a claim
        for learner in self.learners:
            await learner.restore()
            self.stats.model_seq[learner.model.name] = learner.model.seq
        if self.lease is not None:
            await self.lease.start()
            await self._standby_until_leased()
            self._supervise(self._watch_lease(), "lease watch")
        for learner in self.learners:
            await learner.takeover(restored=True)
            self.stats.model_seq[learner.model.name] = learner.model.seq
        self._count_integrity()
        if self.join is not None and not self.per_partition:  # per partition: on takeover
            await self._rebuild_pending(self.learners)
        await self.app.add_runtime_dependency(self.ingest)  # join the inputs' group
        if self.learners and self._follower is None:
            self._follower = self._supervise(self._follow_history(), "history follower")
        self._supervise(self.broker_watch.run(), "broker watch")
        tune_gc()
        self.stats.role = "active"
        wait_s = self.settings.worker.session_timeout_ms / 1000 * 10
        try:  # ready = consuming; another worker may hold every partition, so do not insist
            await asyncio.wait_for(self.ingest.assigned.wait(), wait_s)
            self.stats.ready = True
        except TimeoutError:
            log.warning("no input partitions assigned after %.0fs", wait_s)

    async def _standby_until_leased(self) -> None:
        """Follow the history until this worker holds the lease of the global models."""
        assert self.lease is not None
        waited = 0.0
        while not self.lease.acquired.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lease.acquired.wait(), 1.0)
            waited += 1.0
            if self.lease.acquired.is_set():
                break
            if self.stats.role != "standby" and waited >= 2:
                self.stats.role = "standby"
                log.warning("standby: another worker of group %r is active for %s; following "
                            "the history, ready to take over",
                            self.settings.worker.group_id, [m.name for m in self.models])
            for learner in self.learners:  # keep up, so a takeover folds only a short tail
                await learner.follow()
                self.stats.model_seq[learner.model.name] = learner.model.seq
        if self.stats.role == "standby":
            log.warning("taking over as the active worker of group %r",
                        self.settings.worker.group_id)

    async def _watch_lease(self) -> None:
        """Stop the worker (exit 1, for a supervisor to restart it as a standby) if the
        lease moves elsewhere while this worker is active."""
        assert self.lease is not None
        await self.lease.lost.wait()
        raise LeaseLostError("another worker holds the lease of the global models now "
                             "(this one was unreachable past worker.lease_session_timeout_ms)")

    def _supervise(self, coro: Any, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task that cannot die silently (agents/supervision.py)."""
        return self.supervisor.run(coro, name)

    def _may_commit(self) -> bool:
        """Input offsets are committed only by a worker that holds its models' current
        epoch (and the lease, for global models): a fenced worker's commits would make
        the next owner skip events nobody learned."""
        if self.fenced_learners():
            return False
        return self.lease is None or self.lease.holding

    def _count_integrity(self) -> None:
        self.stats.rejected_snapshots = sum(lr.rejected_snapshots for lr in self.learners)
        self.stats.skipped_history_records = sum(len(lr.skipped) for lr in self.learners)

    async def expire_pending(self) -> None:
        """Expire pending entries even when no records arrive (orphan labels are
        dead-lettered). At-least-once: after a crash an orphan may be dead-lettered twice."""
        if self.join is None or not self.stats.broker_connected:
            return  # expire once the broker is back (orphan labels must reach the DLQ)
        out = BatchOutput()
        async with self.model_lock:
            self.join.end_batch(out, int(time.time() * 1000))
        futures: list[Any] = []
        if out.dead_letters:
            for dead in out.dead_letters:
                self.stats.dead_letters[dead.reason] += 1
            futures += await self.output.publish_dead_letters(
                self.settings.topics.dead_letters, out.dead_letters)
        await asyncio.gather(*futures)
        if out.pending is not None:
            await self._after_outputs(out)

    async def _after_outputs(self, result: Any) -> None:
        """Between outputs and history: persist new pending entries, report drifts."""
        producer = self.output.producer
        assert producer is not None
        if result.pending is not None:
            sent = await (await producer.send(self.settings.topics.pending,
                                              value=result.pending, partition=0))
            assert self.join is not None
            self.join.appended(sent.offset, result.pending_ids)
        if result.drifts:
            await self.reporter.publish("drift", sorted({name for name, _ in result.drifts}))

    async def before_batch(self) -> None:
        """Run under the model lock before each batch: resume from the history after a
        rebalance; if a newer epoch fenced a model, rebuild it first."""
        await self._resume_from_history_now()
        await self.retake_if_fenced()

    async def _resume_after_rebalance(self) -> None:
        """Scheduled by every rebalance: resume even if no batch comes (the committed
        offsets may point past everything there is)."""
        try:
            async with self.model_lock:
                await self._resume_from_history_now()
        except Exception as exc:  # e.g. the broker did not answer: stop, commit nothing
            log.error("resuming the inputs from the history failed: %r", exc)
            await self.app.crash(TakeoverError(f"resuming the inputs failed: {exc!r}"))

    async def _resume_from_history_now(self) -> None:
        """Once per rebalance, under the model lock: seek every input partition to where
        the models' history ends (:meth:`_history_position`); batches fetched before are
        void and fetched again."""
        if self._resume_from_history and self.learners and not self.fenced_learners():
            self._resume_from_history = False
            await self.ingest.rewind(self._history_position)

    def fenced_learners(self) -> list[Learner]:
        """Learners whose model a newer epoch has claimed (noticed by the follower)."""
        return [lr for lr in self.learners if lr.fenced]

    def _history_position(self, tp: Any) -> int | None:
        """Where learning resumes on ``tp``: the lowest position the models' histories
        cover, or None (no model learned from it yet: the committed offset). The history,
        not the committed offset, is the record of what was learned: a fenced owner that
        had not noticed yet may have committed past batches its history records no longer
        count, and the next owner must learn them."""
        if not self.learners:
            return None
        known = [lr.fold.offsets.get(f"{tp.topic}:{tp.partition}") for lr in self.learners]
        # a partition no history covers starts at the beginning, not at a committed offset
        # (only a fenced worker could have committed there without a Learned record)
        return min((k for k in known if k is not None), default=0)

    async def retake_if_fenced(self) -> None:
        """If a newer epoch claimed a model (rollback, second worker), rebuild it from the
        history and re-read the input from what the history covers."""
        fenced = self.fenced_learners()
        if not fenced:
            return
        for learner in fenced:
            if learner.fenced_by == "rollback":
                log.info("%s: rolled back by `riverbed rollback`; continuing from the "
                         "restored version", learner.model.name)
            else:
                log.warning("%s: fenced by a newer epoch (%s); taking over again",
                            learner.model.name, learner.fenced_by or "another worker")
            await learner.takeover()
            self.stats.model_seq[learner.model.name] = learner.model.seq
        self._resume_from_history = False
        await self.ingest.rewind(self._history_position)

    async def _follow_history(self) -> None:
        """Watch the history for Claimed records of our models with a newer epoch."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from riverbed.streams.history_codec import KIND_HEADER, decode_event

        s = self.settings
        tp = TopicPartition(s.topics.history, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.broker.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=200)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, min(lr.history_position for lr in self.learners))
            while True:
                by_name = {lr.model.name: lr for lr in self.learners}
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    kind = dict(record.headers or ()).get(KIND_HEADER)
                    if kind not in (b"Claimed", b"Restored"):
                        continue
                    try:
                        event = decode_event(record.value or b"", record.offset)
                    except DecodeError:  # not ours or damaged: the folds skip it too
                        continue
                    learner = by_name.get(event.model)
                    if learner is None or event.epoch <= learner.epoch:
                        continue
                    body: Any = event.body
                    if isinstance(body, Claimed) and body.owner == ROLLBACK_OWNER:
                        continue  # its Restored follows; take over once it is written
                    learner.fenced = True
                    learner.fenced_by = ("rollback" if isinstance(body, Restored)
                                         else f"worker {getattr(body, 'owner', '?')}")
                    async with self.model_lock:  # take over now, not at the next batch
                        await self.retake_if_fenced()
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        """Stop agents and services; commits offsets of finished batches."""
        await self.supervisor.cancel_all()
        await self.app.stop()
        if self.lease is not None:
            await self.lease.stop()  # after the last commit: a standby takes over at once
        await self.output.stop()
        self._faust_dir.cleanup()

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Run until ``stop`` is set, SIGINT/SIGTERM, or a crash; returns an exit code."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # `kill -USR1 PID`: what waits where
        self.log_limiter.install()
        fatal = self.supervisor.fatal = loop.create_future()
        reason: Any = None
        try:
            await self.start()
            ended = asyncio.ensure_future(self.app.wait_until_stopped())  # stopped or crashed
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([ended, stopping, fatal],
                               return_when=asyncio.FIRST_COMPLETED)
            for fut in (ended, stopping):
                fut.cancel()
            reason = self.app.crash_reason if self.app.crashed else None
            if fatal.done():
                reason = fatal.result()
        finally:
            if isinstance(reason, BrokerUnavailableError):
                pass  # nothing can be flushed or committed: exit now (the CLI exits hard)
            else:
                try:  # bounded: with the broker gone, flushing could wait for its timeout
                    await asyncio.wait_for(self.stop(), 20 if reason is not None else None)
                except TimeoutError:
                    log.warning("stop did not finish within 20s; exiting anyway")
        if isinstance(reason, RiverbedError):
            log.error("worker stopped: %s", reason)
            return 1
        if reason is not None:
            log.error("worker crashed: %r", reason)
            return 1
        return 0
