"""Model ownership inside a worker: restore, stand by, claim, fence, take over, resume.

Who may learn a model is decided by its history, not by Kafka's group membership: an
owner appends ``Claimed{epoch}`` and learns; a newer claim fences it (``agents/learner.py``).
This module runs that protocol for one worker:

* global models (one model learns from every partition) are restored from the history,
  followed as a *standby* until this worker holds the lease (``streams/lease.py``), then
  claimed; a lost lease stops the worker;
* per-partition models (``worker.model_per_partition``) move with their input partitions
  on every rebalance: released by the old owner, taken over by the new one;
* a follower watches the history for newer claims of our models (a rollback, a second
  worker) and takes the model over again at once;
* with ``worker.scale_out = "replicas"`` every worker serves the global models as
  prediction *replicas* that follow the history (``agents/replica.py``) and send their
  labelled examples to the training topic. The lease is spread: one per training
  partition, dealt out over the workers (``streams/lease.py``); the holder of a model's
  training partition claims that model and is its single learner (``agents/training.py``).
  When the partition moves (a worker joins, leaves, dies or is frozen past its session),
  the former learner finishes the fetch in hand, rebuilds the model from the history and
  serves it as a replica again; the new learner's claim fences anything it still writes.
  Inputs resume from their committed offsets: the history records training offsets;
* after every rebalance or takeover the inputs are sought to where the models' history
  ends (:meth:`ModelOwnership.history_position`), because the history -- not the committed
  offset -- is the record of what was learned.

Delivery guarantee: nothing is learned twice and nothing is skipped. Input offsets are
committed only while this worker holds its models' current epoch (and the lease), and a
batch fetched before a rewind is void.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiokafka import TopicPartition

from riverbed.agents.inference import InferenceProcessor
from riverbed.agents.learner import ROLLBACK_OWNER, Learner
from riverbed.agents.pending_labels import PendingLabels
from riverbed.agents.replica import ReplicaFollower
from riverbed.agents.supervision import Supervisor
from riverbed.agents.training import TrainingLoop, TrainingPublisher
from riverbed.streams.config import Settings
from riverbed.streams.errors import DecodeError, LeaseLostError, TakeoverError
from riverbed.streams.history import Claimed, Restored
from riverbed.streams.history_codec import KIND_HEADER, decode_record
from riverbed.streams.history_log import record_key
from riverbed.streams.ingest import BatchIngest
from riverbed.streams.kafka_clients import PartitionReader
from riverbed.streams.lease import Lease
from riverbed.streams.models import OnlineModel
from riverbed.streams.telemetry import WorkerStats
from riverbed.streams.training import training_partition

log = logging.getLogger(__name__)

#: builds the learner of a model (the worker's history topics and key)
LearnerFactory = Callable[[OnlineModel], Learner]
#: stops the worker with an exception (Faust's ``app.crash``)
Crash = Callable[[BaseException], Awaitable[None]]


def shard_name(model: str, partition: int) -> str:
    """The name of ``model``'s instance for one input partition (model_per_partition)."""
    return f"{model}@p{partition}"


class ModelOwnership:
    """Runs the ownership protocol of one worker's models (see the module docstring)."""

    def __init__(self, settings: Settings, stats: WorkerStats, processor: InferenceProcessor,
                 ingest: BatchIngest, *, new_learner: LearnerFactory | None,
                 pending: PendingLabels | None, supervisor: Supervisor, crash: Crash,
                 lock: asyncio.Lock, training: TrainingPublisher | None = None) -> None:
        self.settings, self.stats, self.processor, self.ingest = settings, stats, processor, ingest
        self.per_partition = settings.worker.model_per_partition
        self.new_learner = new_learner
        self.pending = pending
        self.supervisor = supervisor
        self.crash = crash
        #: replicas: where learners publish model states (replica_catch_up = "state")
        self.training = training
        #: held while a batch is processed and while models change hands
        self.lock = lock
        #: prediction replicas of the global models, one learner per model (spread lease)
        self.replicas = settings.worker.scale_out == "replicas"
        #: the global models' single-writer lease (None with per-partition models); with
        #: replicas, one lease per training partition of a global model
        self.lease = None if self.per_partition else Lease(settings, spread=(
            {self._training_partition(spec.name) for spec in settings.models}
            if self.replicas else None))
        #: replicas: the training loops of the models this worker learns, by model name
        self._training: dict[str, tuple[TrainingLoop, asyncio.Task[None]]] = {}
        self._follower: asyncio.Task[None] | None = None
        self._crashing: asyncio.Future[None] | None = None
        #: set by every rebalance: the inputs are sought to the history before any batch
        self._resume_from_history = False
        self._replica_follower: asyncio.Task[None] | None = None
        #: input partitions assigned at the last rebalance (replicas rebuild the pending
        #: labels of those they gain)
        self._assigned: set[int] = set()

    @property
    def learners(self) -> list[Learner]:
        """The learners of the models served now (empty when the history is disabled)."""
        learners = (slot.learner for slot in self.processor.slots)
        return [learner for learner in learners if isinstance(learner, Learner)]

    # -- start: restore, stand by, claim ------------------------------------------------------
    async def restore(self) -> None:
        """Rebuild every global model from its history; nothing is written."""
        for learner in self.learners:
            await learner.restore()
            self.stats.model_seq[learner.model.name] = learner.model.seq

    async def acquire(self, before_claim: Callable[[], Awaitable[None]] | None = None) -> None:
        """Hold the lease (following the history as a standby until then), run
        ``before_claim`` (exactly-once: start the transactional producer, which fences an
        older one), claim every global model, rebuild their pending labels, and start
        following the history."""
        if self.replicas:
            await self._serve_replicas(before_claim)
            return
        if self.lease is not None:
            await self.lease.start()
            await self._standby_until_leased()
            self._supervise(self._watch_lease(), "lease watch")
        if before_claim is not None:
            await before_claim()
        for learner in self.learners:
            await learner.takeover(restored=True)
            self.stats.model_seq[learner.model.name] = learner.model.seq
        self.count_integrity()
        if self.pending is not None and not self.per_partition:  # per partition: on takeover
            await self.pending.rebuild([lr.fold for lr in self.learners])
        self._start_follower()

    async def _serve_replicas(self, before_claim: Callable[[], Awaitable[None]] | None
                              ) -> None:
        """Scale-out: serve every global model as a replica now; learn those whose training
        partition this worker holds, as the spread lease deals them (and re-deals them)."""
        assert self.lease is not None and before_claim is None  # config refuses exactly_once
        self.stats.role = "replica"
        self._restart_replica_follower()
        await self.lease.start()
        self._supervise(self._learn_assigned(), "learner assignment")

    def _training_partition(self, model: str) -> int:
        return training_partition(model, self.settings.topics.partitions)

    async def _learn_assigned(self) -> None:
        """After every assignment of the spread lease: learn the models of the training
        partitions held, release the others."""
        assert self.lease is not None
        while True:
            await self.lease.changed.wait()
            self.lease.changed.clear()
            held = self.lease.held
            for name in sorted(self._training):
                if self._training_partition(name) not in held:
                    await self._release(name, "its training partition moved to another worker")
            gained = [lr for lr in self.learners if lr.model.name not in self._training
                      and self._training_partition(lr.model.name) in held]
            if gained:
                await self._learn(gained)

    async def _learn(self, learners: list[Learner]) -> None:
        """Stop replicating ``learners``' models, claim them (a new epoch fences a former
        learner), and run their training loops."""
        async with self.lock:  # no batch predicts while the replicas become the models
            await self._stop_replica_follower()
            try:
                for learner in learners:
                    if learner.model.spec.replica_catch_up == "state":
                        await learner.restore()  # its replica loaded states: not exact
                    await learner.takeover(restored=True)
                    self.stats.model_seq[learner.model.name] = learner.model.seq
                    loop = TrainingLoop(self.settings, learner, self.lock, self.stats,
                                        self.training)
                    self._training[learner.model.name] = (
                        loop, self._supervise(loop.run(), f"learner {learner.model.name}"))
            finally:
                self._restart_replica_follower()
        self.count_integrity()
        self._show_learning()
        log.warning("learner of %s for group %r (this worker holds their training "
                    "partitions)", [lr.model.name for lr in learners],
                    self.settings.worker.group_id)
        self._start_follower()  # a newer claim (another learner) releases the model

    async def _release(self, name: str, why: str) -> None:
        """Stop learning ``name`` (its fetch in hand is learned and appended first), rebuild
        it from the history -- the record of what was learned: an append a newer epoch
        fenced is not in it -- and serve it as a replica again."""
        running = self._training.pop(name, None)
        if running is None:  # released already (the lease and a newer claim both said so)
            return
        loop, task = running
        loop.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task  # an exception was reported by the supervisor already
        learner = next(lr for lr in self.learners if lr.model.name == name)
        async with self.lock:
            await self._stop_replica_follower()
            try:
                await learner.restore()
                self.stats.model_seq[name] = learner.model.seq
            finally:
                self._restart_replica_follower()
        self._show_learning()
        log.warning("%s: no longer its learner (%s); serving it as a replica at seq %d",
                    name, why, learner.model.seq)

    def _show_learning(self) -> None:
        self.stats.learning = sorted(self._training)
        self.stats.role = "learner" if self._training else "replica"

    def _restart_replica_follower(self) -> None:
        """Follow the history for the models served as replicas (none learned here)."""
        replicas = [lr for lr in self.learners if lr.model.name not in self._training]
        if replicas and self._replica_follower is None:
            self._replica_follower = self._supervise(
                ReplicaFollower(self.settings, replicas, self.stats).run(), "replica follower")

    async def _stop_replica_follower(self) -> None:
        follower, self._replica_follower = self._replica_follower, None
        if follower is not None:  # it applies each fetch synchronously: nothing half-done
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def stop(self) -> None:
        """Leave the lease group (after the last commit: a standby takes over at once)."""
        if self.lease is not None:
            await self.lease.stop()

    async def _standby_until_leased(self) -> None:
        assert self.lease is not None
        waited = 0.0
        while not self.lease.acquired.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.lease.acquired.wait()
            waited += 1.0
            if self.lease.acquired.is_set():
                break
            if self.stats.role != "standby" and waited >= 2:
                self.stats.role = "standby"
                log.warning("standby: another worker of group %r is active for %s; following "
                            "the history, ready to take over", self.settings.worker.group_id,
                            [m.name for m in self.processor.models])
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

    def may_commit(self) -> bool:
        """Input offsets are committed only by a worker that holds its models' current
        epoch (and the lease, for global models): a fenced worker's commits would make
        the next owner skip events nobody learned."""
        if self.replicas:  # batches are done once their training records are acked
            return True
        if self.fenced_learners():
            return False
        return self.lease is None or self.lease.holding

    def count_integrity(self) -> None:
        """Export refused snapshots and skipped history records (metrics, stats)."""
        self.stats.rejected_snapshots = sum(lr.rejected_snapshots for lr in self.learners)
        self.stats.skipped_history_records = sum(len(lr.skipped) for lr in self.learners)

    # -- rebalances ---------------------------------------------------------------------------
    async def on_assigned(self, partitions: set[int]) -> None:
        """After a rebalance, before any batch of it is processed: with replicas, move
        the pending labels (:meth:`_move_pending`); with per-partition
        models, release the models of partitions now owned elsewhere and take over those
        newly assigned (their new owner's claim fences anything this worker still writes).
        A failed takeover stops the worker with a TakeoverError (nothing of those
        partitions is committed: see OwnershipError)."""
        self.stats.partitions = sorted(partitions)
        if self.replicas:  # inputs resume from their committed offsets
            await self._move_pending(partitions)
            return
        self._resume_from_history = True
        self._supervise(self._resume_after_rebalance(), "resume")  # runs after the lock
        if not self.per_partition:
            return
        try:
            await self._move_models(partitions)
        except Exception as exc:  # noqa: BLE001 -- e.g. the history could not be read in time
            log.error("taking over partitions %s failed: %r", sorted(partitions), exc)
            # crash from outside aiokafka's rebalance callback (stopping the consumer
            # from inside it would wait on itself)
            self._crashing = asyncio.ensure_future(self.crash(TakeoverError(
                f"taking over the models of partitions {sorted(partitions)} failed: {exc!r}")))

    async def _move_pending(self, partitions: set[int]) -> None:
        """Replicas: drop the early labels of partitions now owned elsewhere (their new
        owner joins them; expiring here would dead-letter them falsely) and rebuild the
        pending entries of the partitions gained from the pending log (their unlabelled
        events, predicted by whichever worker owned them). A failed rebuild stops the
        worker with a TakeoverError."""
        gained, revoked = sorted(partitions - self._assigned), self._assigned - partitions
        self._assigned = set(partitions)
        if self.pending is None:
            return
        for partition in sorted(revoked):
            self.pending.join.release(partition, models=())
        if not gained:
            return
        try:
            async with self.lock:
                added = await self.pending.rebuild(
                    [lr.fold for lr in self.learners], partitions=gained,
                    models={lr.model.name for lr in self.learners})
            log.info("partitions %s: %d pending entries rebuilt", gained, added)
        except Exception as exc:  # noqa: BLE001 -- e.g. the log could not be read
            self._crashing = asyncio.ensure_future(self.crash(TakeoverError(
                f"rebuilding the pending labels of partitions {gained} failed: {exc!r}")))

    async def _move_models(self, partitions: set[int]) -> None:
        """Release the models of partitions not in ``partitions``, take over the others."""
        join = self.pending.join if self.pending is not None else None
        async with self.lock:
            owned = {slot.partition for slot in self.processor.slots
                     if slot.partition is not None}
            for partition in sorted(owned - partitions):
                removed = self.processor.remove_partition(partition)
                if join is not None:  # its pending entries are the new owner's now
                    join.release(partition, self._shard_names([partition]))
                log.info("released the models of partition %d (%d models)", partition,
                         len(removed))
            gained = sorted(partitions - owned)
            learners = [lr for p in gained for lr in await self._take_partition(p)]
            if gained and self.pending is not None:  # one read of the pending log for all
                added = await self.pending.rebuild([lr.fold for lr in learners],
                                                   partitions=gained,
                                                   models=self._shard_names(gained))
                log.info("partitions %s: %d pending entries taken over", gained, added)

    def _shard_names(self, partitions: list[int]) -> set[str]:
        return {shard_name(spec.name, p) for spec in self.settings.models for p in partitions}

    async def _take_partition(self, partition: int) -> list[Learner]:
        """Serve the per-partition models of ``partition`` (taking over their history)."""
        learners: list[Learner] = []
        for spec in self.settings.models:
            model = OnlineModel(spec, name=shard_name(spec.name, partition))
            learner = self.new_learner(model) if self.new_learner is not None else None
            if learner is not None:
                await learner.takeover()
                learners.append(learner)
            self.processor.add_model(model, learner, partition)
            self.stats.model_seq[model.name] = model.seq
            log.info("serving %s (partition %d)", model.name, partition)
        self._start_follower()
        return learners

    # -- resuming from the history ------------------------------------------------------------
    async def before_batch(self) -> None:
        """Run under the model lock before each batch: resume from the history after a
        rebalance; if a newer epoch fenced a model, rebuild it first."""
        await self._resume_now()
        await self.retake_if_fenced()

    async def _resume_after_rebalance(self) -> None:
        """Scheduled by every rebalance: resume even if no batch comes (the committed
        offsets may point past everything there is)."""
        try:
            async with self.lock:
                await self._resume_now()
        except Exception as exc:  # noqa: BLE001 -- e.g. no broker: stop, commit nothing
            log.error("resuming the inputs from the history failed: %r", exc)
            await self.crash(TakeoverError(f"resuming the inputs failed: {exc!r}"))

    async def _resume_now(self) -> None:
        """Once per rebalance, under the model lock: seek every input partition to where
        the models' history ends; batches fetched before are void and fetched again."""
        if self._resume_from_history and self.learners and not self.fenced_learners():
            self._resume_from_history = False
            await self.ingest.rewind(self.history_position)

    def fenced_learners(self) -> list[Learner]:
        """Learners whose model a newer epoch has claimed (noticed by the follower)."""
        return [lr for lr in self._watched() if lr.fenced]

    def history_position(self, tp: TopicPartition) -> int | None:
        """Where learning resumes on ``tp``: the lowest position the models' histories
        cover, or None (no model learns here: the committed offset). A fenced owner that
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
        usurped = self._usurped(fenced)
        if usurped is not None:  # stop; the worker stops, this waits until then
            await self.supervisor.stop(usurped)
            await asyncio.Event().wait()
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
        if not self.replicas:  # replicas' histories record training offsets, not inputs
            await self.ingest.rewind(self.history_position)

    # -- following the history ------------------------------------------------------------------
    def _watched(self) -> list[Learner]:
        """The learners whose models this worker writes (with replicas: those it learns)."""
        if self.replicas:
            return [lr for lr in self.learners if lr.model.name in self._training]
        return self.learners

    def _start_follower(self) -> None:
        if self._follower is None and self._watched():
            self._follower = self._supervise(self._follow_history(), "history follower")

    async def _follow_history(self) -> None:
        """Watch the history for Claimed/Restored records of our models with a newer epoch
        and take those models over again at once (not at the next batch)."""
        s = self.settings
        tp = TopicPartition(s.topics.history, 0)
        start = {tp: min(lr.history_position for lr in self._watched())}
        verify_key = record_key(s, self._watched()[0].key)  # the learners share one key
        async with PartitionReader(s.broker, [tp], start=start, fetch_max_wait_ms=200
                                   ) as reader:
            while True:
                for record in (await reader.fetch(1000)).get(tp, []):
                    kind = dict(record.headers or ()).get(KIND_HEADER)
                    if kind not in (b"Claimed", b"Restored"):
                        continue
                    try:  # signed, as every fold reads it
                        event = decode_record(record.value, record.offset, record.headers,
                                              verify_key)
                    except DecodeError:  # unsigned, not ours or damaged: the folds skip it
                        continue
                    # the models written here now: one released meanwhile (replicas) is
                    # not fenced by its new learner's claim, it was handed over
                    by_name = {lr.model.name: lr for lr in self._watched()}
                    learner = by_name.get(event.model)
                    # a fencing record is of the next epoch: the fold ignores one that
                    # skips epochs (not riverbed's), and so does this watch
                    if learner is None or event.epoch != learner.epoch + 1:
                        continue
                    body = event.body
                    if isinstance(body, Claimed) and body.owner == ROLLBACK_OWNER:
                        continue  # its Restored follows; take over once it is written
                    learner.fenced = True
                    learner.fenced_by = ("rollback" if isinstance(body, Restored) else
                                         f"worker {body.owner}" if isinstance(body, Claimed)
                                         else "another worker")
                    if self.replicas and learner.fenced_by != "rollback":
                        await self._release(event.model, f"claimed by {learner.fenced_by}")
                        continue
                    usurped = self._usurped([learner])
                    if usurped is not None:
                        raise usurped
                    async with self.lock:
                        await self.retake_if_fenced()

    def _usurped(self, fenced: list[Learner]) -> LeaseLostError | None:
        """Global models claimed by another *worker* (not a rollback): that worker holds
        the lease now (this one was frozen past it), and claiming again would fence the
        rightful owner. The error to stop with, or None."""
        by_worker = [lr for lr in fenced if lr.fenced_by != "rollback"]
        if self.lease is None or not by_worker:
            return None
        return LeaseLostError(f"{by_worker[0].model.name}: claimed by {by_worker[0].fenced_by}, "
                              "the active worker now; stopping (nothing more is committed here)")

    def _supervise(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task that cannot die silently (agents/supervision.py)."""
        return self.supervisor.run(coro, name)
