"""A riverbed worker process: the composition root. It builds the parts, starts them in
the order that makes a failed start harmless, and stops them.

The parts, one job each: :class:`~riverbed.streams.ingest.BatchIngest` (consume inputs in
batches), :class:`~riverbed.agents.batch_agent.InferenceAgent` (process, publish, confirm
in order), :class:`~riverbed.agents.ownership.ModelOwnership` (who may learn which model),
:class:`~riverbed.agents.pending_labels.PendingLabels` (the delayed-label store's I/O),
:class:`~riverbed.agents.reporter.Reporter` (metrics reports), the supervisor and broker
watch (``agents/supervision.py``) and the pages (``agents/pages.py``). A Faust app runs
the services, timers and web server.

Start it with :meth:`Worker.run` (or ``riverbed worker -c CONFIG``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

from riverbed.agents.batch import BatchOutput
from riverbed.agents.batch_agent import InferenceAgent
from riverbed.agents.inference import InferenceProcessor
from riverbed.agents.labels import LabelJoin
from riverbed.agents.learner import Learner
from riverbed.agents.ownership import ModelOwnership, shard_name
from riverbed.agents.pages import describe_models, register_pages
from riverbed.agents.pending_labels import PendingLabels
from riverbed.agents.reporter import Reporter
from riverbed.agents.runtime import ClientLogLimiter, dump_tasks, tune_gc
from riverbed.agents.supervision import BrokerWatch, Supervisor
from riverbed.agents.training import TrainingPublisher
from riverbed.agents.web import WebApi, worker_port
from riverbed.schemas import load_schema
from riverbed.streams.app import make_faust_app
from riverbed.streams.broker_features import detect_features
from riverbed.streams.codec import make_codec
from riverbed.streams.config import Settings
from riverbed.streams.errors import (
    BrokerUnavailableError,
    LeaseLostError,
    RiverbedError,
    TransactionsUnavailableError,
)
from riverbed.streams.features import FeatureExtractor
from riverbed.streams.history_log import HistoryLog, SnapshotIndex
from riverbed.streams.ingest import Batch, BatchIngest
from riverbed.streams.models import OnlineModel
from riverbed.streams.output import BatchProducer
from riverbed.streams.registry import RegistryClient, SchemaPrefetch
from riverbed.streams.snapshots import snapshot_key
from riverbed.streams.telemetry import WorkerStats
from riverbed.streams.topics import (
    check_record_size,
    ensure_topics,
    retention_warnings,
    riverbed_topics,
)

__all__ = ["Worker", "shard_name"]

log = logging.getLogger(__name__)
#: how long a clean stop (SIGTERM, SIGINT) may take to flush and commit before the worker
#: gives up on it and exits (a broker that stops answering must not keep it up forever)
STOP_TIMEOUT_S = 60.0
#: the same after a crash (the broker may be the reason: do not wait for its timeouts)
CRASH_STOP_TIMEOUT_S = 20.0


class Worker:
    """Everything one worker process runs; built from :class:`Settings`."""

    def __init__(
        self, settings: Settings, web_port: int | None = None,
        registry: RegistryClient | None = None,
    ) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        if registry is None and settings.registry.url:
            registry = RegistryClient(settings.registry)
        #: the schema registry client (None: plain Avro, no registry)
        self.registry = registry
        event_schema = self.event_schema = load_schema(settings.event.schema, settings.base_dir)
        topics = settings.topics
        timeout_s = settings.broker.reconnect_timeout_s + 10
        self.exactly_once = settings.worker.processing_guarantee == "exactly_once"
        #: the batch path's producer: predictions, dead letters, pending log, history; under
        #: exactly-once a transactional one, one id per group (a single active worker holds
        #: the lease), so the active worker fences any older one when it starts
        self.output = BatchProducer(
            settings.broker, request_timeout_s=timeout_s,
            max_record_bytes=topics.max_record_bytes,
            transactional_id=f"{settings.worker.group_id}.batches" if self.exactly_once
            else None)
        #: writes outside a batch (claims, index markers, metrics and drift reports,
        #: expiry); the batch producer itself unless that one is transactional
        self.control = (BatchProducer(settings.broker, request_timeout_s=timeout_s,
                                      max_record_bytes=topics.max_record_bytes)
                        if self.exactly_once else self.output)
        #: why the broker hands out no producer ids, if it does not (streams/broker_features)
        self._broker_detail = ""
        #: keeps aiokafka/Faust from logging every failed attempt while the broker is away
        self.log_limiter = ClientLogLimiter()
        self._history: tuple[HistoryLog, SnapshotIndex, bytes] | None = None
        per_partition = settings.worker.model_per_partition
        models = [] if per_partition else [OnlineModel(spec) for spec in settings.models]
        new_learner = self._learner if settings.history.enabled else None
        self.join = LabelJoin(settings, registry) if settings.labels.enabled else None
        decoder = make_codec(event_schema, f"{topics.events}-value", registry)
        encoder = make_codec(load_schema("prediction"), f"{topics.predictions}-value", registry)
        self.processor = InferenceProcessor(
            settings, event_schema, join=self.join, decoder=decoder, prediction_encoder=encoder,
            models=models, stats=self.stats,
            learners=[new_learner(m) for m in models] if new_learner else None,
        )
        #: a record-size risk, logged at start (a certain excess refuses to start here)
        self.record_size_warning = check_record_size(
            settings, [slot.extractor.widest() for slot in self.processor.slots]
            or [FeatureExtractor(event_schema, settings.event, spec, settings.limits,
                                 binary=OnlineModel(spec).is_binary).widest()
                for spec in settings.models])
        #: resolves a batch's schema ids before it is processed (streams/registry.py)
        prefetch = None if registry is None else SchemaPrefetch(registry, {
            topics.events: decoder, topics.labels: self.join and self.join.decoder}, [encoder])
        self.pending = (PendingLabels(settings, self.join, self.output, self.stats,
                                      control=self.control)
                        if self.join is not None else None)
        self._faust_dir = tempfile.TemporaryDirectory(prefix="riverbed-faust-")
        self.batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=4)  # see streams/ingest.py
        inputs = [topics.events] + ([topics.labels] if self.join is not None else [])
        self.model_lock = asyncio.Lock()
        #: scale-out: every worker's labelled examples go to the models' single learner
        self.training = (TrainingPublisher(settings, self.control)
                         if settings.worker.scale_out == "replicas" else None)
        self.ingest = BatchIngest(settings, inputs, self.batches, on_assign=self._assigned,
                                  progress=self.stats.inputs, may_commit=self._may_commit)
        self.reporter = Reporter(settings, self.stats, self.processor, self.join,
                                 self.ingest.lag, self.control)
        self.app = make_faust_app(settings, self.stats, Path(self._faust_dir.name), web_port,
                                  [self.reporter.families])
        #: background tasks that must never die silently (agents/supervision.py)
        self.supervisor = Supervisor(self.app.crash)
        self.ownership = ModelOwnership(
            settings, self.stats, self.processor, self.ingest, new_learner=new_learner,
            pending=self.pending, supervisor=self.supervisor, crash=self.app.crash,
            lock=self.model_lock, training=self.training)
        self.broker_watch = BrokerWatch(settings, self.stats, self.log_limiter,
                                        self.ingest.assigned.is_set)
        InferenceAgent(
            self.app, self.batches, self.processor, self.output, self.ingest, settings,
            before_batch=self.ownership.before_batch, guard=self.model_lock,
            after_outputs=self._after_outputs, resolve_schemas=prefetch,
            stop=self.supervisor.stop,
        ).register()
        self._register_timers()
        register_pages(self.app, self.processor, self.join)
        WebApi(worker_port(self), self.app).register()  # the HTTP API and page (agents/web.py)

    def _register_timers(self) -> None:
        @self.app.timer(1.0)
        async def expire_pending() -> None:
            if self.pending is not None:
                await self.pending.expire(self.model_lock)

    @property
    def models(self) -> list[OnlineModel]:
        """The models this worker serves now (per-partition ones come and go)."""
        return self.processor.models

    @property
    def learners(self) -> list[Learner]:
        """The learners of :attr:`models` (empty when the history is disabled)."""
        return self.ownership.learners

    def describe_models(self) -> dict[str, Any]:
        """Live seq, lineage, epoch and fingerprint of every model (``/riverbed/models``)."""
        return describe_models(self.processor, self.join)

    def _learner(self, model: OnlineModel) -> Learner:
        s = self.settings
        if self._history is None:
            key = snapshot_key(s)
            self._history = (HistoryLog.of(s, self.control, key),
                             SnapshotIndex(s.broker, s.topics.snapshots, self.control), key)
        history, index, key = self._history
        h = s.history
        extractor = FeatureExtractor(self.event_schema, s.event, model.spec, s.limits,
                                     binary=model.is_binary)
        return Learner(model, history, index, key, snapshot_every_steps=h.snapshot_every_steps,
                       snapshot_every_s=h.snapshot_every_s, id_window=h.id_window,
                       probe_size=h.probe_size, check=extractor.check_example)

    async def _assigned(self, partitions: set[int]) -> None:
        await self.ownership.on_assigned(partitions)

    def _may_commit(self) -> bool:
        return self.ownership.may_commit()

    async def _after_outputs(self, result: BatchOutput) -> None:
        """Between a batch's acks and its history append: persist its new pending
        entries, send its training records (replicas), report drifts."""
        if self.pending is not None:
            await self.pending.persist(result)
        if result.training and self.training is not None:  # acked before the commit
            await self.training.publish(result.training)
        if result.drifts:
            await self.reporter.publish("drift", list(result.drifted_models))

    async def start(self) -> None:
        """Start in the order that makes a failed start harmless: provision topics, bind the
        web server, restore every model from its history (nothing written yet); then, for
        global models, wait as a *standby* until this worker holds the lease; only then
        claim the models (the first write), rebuild the pending labels and consume."""
        s = self.settings
        await ensure_topics(s.broker, riverbed_topics(s))
        await self._check_broker()
        await self.control.start()
        await self.app.start()  # binds the web port: a port in use fails here, before a claim
        self.supervisor.run(self.reporter.run(s.labels.report_interval_s), "metrics reports")
        await self.ownership.restore()
        await self.ownership.acquire(
            before_claim=self._start_transactions if self.exactly_once else None)
        await self.app.add_runtime_dependency(self.ingest)  # join the inputs' group
        self.supervisor.run(self.broker_watch.run(), "broker watch")
        tune_gc()
        if self.training is None:  # replicas: "replica", or "learner" with the lease
            self.stats.role = "active"
        wait_s = self.settings.worker.session_timeout_ms / 1000 * 10
        try:  # ready = consuming; another worker may hold every partition, so do not insist
            async with asyncio.timeout(wait_s):
                await self.ingest.assigned.wait()
            self.stats.ready = True
        except TimeoutError:
            log.warning("no input partitions assigned after %.0fs", wait_s)

    async def _start_transactions(self) -> None:
        """Exactly-once, once this worker holds the lease and before its first write:
        start the transactional producer (fencing an older worker's, whose open
        transaction the broker aborts) and check that transactions work at all."""
        if not self.stats.idempotent_producer:  # no producer ids: no transactions either
            raise TransactionsUnavailableError(
                self.settings.broker.bootstrap_servers,
                f"hands out no producer ids ({self._broker_detail})")
        await self.output.check_transactions()  # starts it (one line if it cannot)
        log.info("exactly-once: batches commit in Kafka transactions (id %s)",
                 self.output.transactional_id)

    async def _check_broker(self) -> None:
        """Use what the broker offers (the idempotent producer), and warn loudly when the
        topics that must keep everything would delete records."""
        s = self.settings
        features = await detect_features(s.broker)
        self.output.idempotent = self.control.idempotent = features.idempotent_producer
        self.stats.idempotent_producer = features.idempotent_producer
        self._broker_detail = features.detail
        if features.idempotent_producer:
            log.info("broker offers the idempotent producer: outputs and history use it")
        else:
            log.info("no idempotent producer (%s): outputs and history use acks=all "
                     "without it (a retried send may be written twice; reads deduplicate)",
                     features.detail)
        self.stats.retention_warnings = await retention_warnings(s.broker, s)
        if self.record_size_warning is not None:
            self.stats.retention_warnings.append(self.record_size_warning)
        for problem in self.stats.retention_warnings:
            log.warning("HISTORY AT RISK: %s", problem)

    async def stop(self) -> None:
        """Stop agents and services; commits offsets of finished batches."""
        await self.supervisor.cancel_all()
        await self.app.stop()
        await self.ownership.stop()  # after the last commit: a standby takes over at once
        await self.output.stop()
        if self.control is not self.output:
            await self.control.stop()
        if self.registry is not None:
            await self.registry.close()
        self._faust_dir.cleanup()

    async def stop_within(self, timeout_s: float) -> bool:
        """:meth:`stop`, given up after ``timeout_s`` with one warning and the await chain
        of every task (what it was waiting for); False if given up. Nothing is lost by
        giving up: what was not committed is processed again, and learned once, by the
        next owner."""
        stopping = asyncio.ensure_future(self.stop())
        await asyncio.wait([stopping], timeout=timeout_s)
        if stopping.done():
            stopping.result()
            return True
        log.warning("stop did not finish within %.0fs; exiting anyway", timeout_s)
        dump_tasks()
        stopping.cancel()
        await asyncio.wait([stopping], timeout=1.0)
        return False

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
                await self.stop_within(CRASH_STOP_TIMEOUT_S if reason is not None
                                         else STOP_TIMEOUT_S)
        if isinstance(reason, LeaseLostError):  # restart me: I come back as a standby
            log.error("worker stopped: %s (exit %d: restart it)", reason, reason.exit_code)
            return reason.exit_code
        if isinstance(reason, RiverbedError):
            log.error("worker stopped: %s", reason)
            return 1
        if reason is not None:
            log.error("worker crashed: %r", reason)
            return 1
        return 0
