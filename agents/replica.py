"""Prediction replicas follow the history (``worker.scale_out = "replicas"``).

A replica is a global model on a worker that does not learn it: it predicts, and its
state follows the learner's in one of two ways, per model (``replica_catch_up``):

* ``examples`` (default): :class:`ReplicaFollower` re-applies every ``Learned`` record's
  examples -- exact: the replica reaches the learner's very state and fingerprint, at the
  cost of the learn CPU on every replica;
* ``state``: it folds the history's bookkeeping only, and loads the estimator the learner
  publishes every N steps / T seconds on ``topics.replica_state``
  (``streams/replica_state.py``) -- once the state verifies (HMAC, before unpickling) and
  the history it folded vouches for it: a ``Learned`` record ending at that seq, in that
  epoch and lineage, with that fingerprint. A state published by a fenced learner or
  forged is refused and counted. Between loads, predictions say the seq of the loaded
  state. ``bench/replicas.py`` measures both.

Staleness, per model (``riverbed_replica_lag_steps`` / ``..._seconds``, and under
``replicas`` in ``/riverbed/stats``): the learn steps the replica was behind when it caught
up (at each history fetch that brings ``Learned`` records; for ``state``, at each load)
and the age of what it applied (now minus the time the learner built it).

Delivery guarantee: none needed -- it only reads. Every fetch and every load is applied
synchronously (no await between changing a model and setting its ``model.seq``), so a
prediction always reports the ``model_seq`` and ``lineage`` of the exact state that made it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from aiokafka import TopicPartition

from riverbed.agents.learner import Learner
from riverbed.streams.config import Settings
from riverbed.streams.effects import apply_effects
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import Learn, Learned, Load
from riverbed.streams.history_codec import decode_record
from riverbed.streams.history_log import record_key
from riverbed.streams.kafka_clients import FOLLOW_WAIT_MS, PartitionReader, Record
from riverbed.streams.replica_state import (
    ModelState,
    StateAssembler,
    load_state,
    verify_state,
)
from riverbed.streams.snapshots import SnapshotIntegrityError
from riverbed.streams.telemetry import WorkerStats

log = logging.getLogger(__name__)
#: Learned records remembered per model to vouch for published states
VOUCHED_STEPS = 10_000
#: History records applied per fetch. A fetch is applied synchronously (no prediction sees
#: half of one), so it is kept small: each record holds up to limits.max_batch_records
#: examples, and a replica catching up with 500 records per fetch re-applied up to a million
#: examples without yielding to its event loop (its web pages and heartbeats).
FOLLOW_RECORDS = 4


class ReplicaFollower:
    """Keeps ``learners``' models (replicas: nobody learns them here) at the history's
    end; cancel it before one of them is claimed (the learner continues from its fold)."""

    def __init__(self, settings: Settings, learners: Sequence[Learner],
                 stats: WorkerStats) -> None:
        self.settings, self.learners, self.stats = settings, list(learners), stats
        #: what history records must be signed with, as every fold reads them (the
        #: learners share one key; with none, no record is folded at all)
        self.verify_key = record_key(settings, learners[0].key) if learners else None
        #: models whose replicas load the learner's states (replica_catch_up = "state")
        self.by_state = {lr.model.name for lr in learners
                         if lr.model.spec.replica_catch_up == "state"}
        #: per such model: seq -> (epoch, lineage, fingerprint) of the Learned records
        #: folded lately (what a published state must match)
        self._vouched: dict[str, OrderedDict[int, tuple[int, int, str]]] = {
            name: OrderedDict() for name in self.by_state}
        #: per such model: the newest complete state not yet loaded (the history may not
        #: have reached its seq yet)
        self._waiting: dict[str, ModelState] = {}

    async def run(self) -> None:
        """Follow until cancelled."""
        if self.by_state:
            await asyncio.gather(self._follow_history(), self._follow_states())
        else:
            await self._follow_history()

    async def _follow_history(self) -> None:
        tp = TopicPartition(self.settings.topics.history, 0)
        start = {tp: min(lr.history_position for lr in self.learners)}
        async with PartitionReader(self.settings.broker, [tp], start=start,
                                   fetch_max_wait_ms=FOLLOW_WAIT_MS) as reader:
            while True:  # a few records per fetch: each is applied without yielding
                self.apply((await reader.fetch(FOLLOW_RECORDS)).get(tp, []))

    async def _follow_states(self) -> None:
        """Read the published states from now on (a replica starts exact: restored from
        the history) and load those the history vouches for."""
        tp = TopicPartition(self.settings.topics.replica_state, 0)
        assembler = StateAssembler(self.by_state)
        async with PartitionReader(self.settings.broker, [tp], start="end",
                                   fetch_max_wait_ms=FOLLOW_WAIT_MS) as reader:
            while True:
                for record in (await reader.fetch(100)).get(tp, []):
                    try:
                        state = assembler.add(record.value or b"")
                    except DecodeError:
                        self.stats.rejected_replica_states += 1
                        continue
                    if state is None or state.model not in self.by_state:
                        continue
                    newest = self._waiting.get(state.model)
                    if newest is None or state.seq >= newest.seq:
                        self._waiting[state.model] = state
                    self.load_states()  # each state is judged: a forged one is counted

    def load_states(self) -> None:
        """Judge each waiting state once the folded history has reached its seq: refuse
        (and count) it unless the history vouches for it and it verifies; load it if it is
        newer than what the replica predicts with. Synchronous."""
        by_name = {lr.model.name: lr for lr in self.learners}
        for name, state in list(self._waiting.items()):
            learner = by_name[name]
            model, fold = learner.model, learner.fold
            if state.seq > fold.seq:
                continue  # the history has not reached it yet
            del self._waiting[name]
            try:
                if self._vouched[name].get(state.seq) != (
                        state.epoch, state.lineage, state.fingerprint) or (
                        state.lineage != fold.lineage):
                    raise SnapshotIntegrityError(
                        f"replica state {state.state_id} of {name} at seq {state.seq}: the "
                        "history holds no Learned record of it (a fenced learner's?)")
                if state.seq <= model.seq:  # authentic or not: nothing newer; no unpickling
                    verify_state(state, learner.key)
                    continue
                estimator = load_state(state, learner.key)
            except SnapshotIntegrityError as exc:
                self.stats.rejected_replica_states += 1
                log.warning("%s; not loaded", exc)
                continue
            behind = fold.seq - model.seq
            model.estimator, model.seq, model.lineage = estimator, state.seq, state.lineage
            self.stats.model_seq[name] = model.seq
            self.stats.observe_replica_lag(name, behind, time.time() - state.time_ms / 1000)

    def apply(self, records: Sequence[Record]) -> None:
        """Fold one fetch into every replica; record its staleness. Synchronous."""
        by_name = {lr.model.name: lr for lr in self.learners}
        effects: dict[str, list[Learn | Load]] = {}
        seq_before = {name: lr.fold.seq for name, lr in by_name.items()}
        newest: dict[str, int] = {}
        for record in records:
            try:
                event = decode_record(record.value, record.offset, record.headers,
                                      self.verify_key)
            except DecodeError:
                continue  # unsigned, not ours or damaged: every fold skips it too
            learner = by_name.get(event.model)
            if learner is None or record.offset < learner.history_position:
                continue
            fold = learner.fold
            effect = fold.apply(event)
            body = event.body
            if event.model in self.by_state:  # bookkeeping only; rollbacks are loaded
                if isinstance(body, Learned) and fold.seq == body.seq_to and (
                        fold.epoch == event.epoch):
                    vouched = self._vouched[event.model]
                    vouched[body.seq_to] = (event.epoch, fold.lineage, body.fingerprint)
                    if len(vouched) > VOUCHED_STEPS:
                        vouched.popitem(last=False)
                if not isinstance(effect, Load):
                    continue
            if effect is not None:
                effects.setdefault(event.model, []).append(effect)
            if isinstance(body, Learned):
                newest[event.model] = event.time
        for learner in self.learners:
            if records:
                learner.history_position = max(learner.history_position,
                                               records[-1].offset + 1)
            name = learner.model.name
            learner.durable_seq = learner.fold.seq  # read from the history: durable
            if name in self.by_state:
                if name in effects:  # a rollback: the restored version, exactly
                    learner.refused_examples += apply_effects(
                        learner.model, effects[name], learner.key, learner.check)
                    learner.model.seq = learner.fold.seq
                    learner.model.lineage = learner.fold.lineage
                self.stats.model_seq[name] = learner.model.seq
                continue
            learner.refused_examples += apply_effects(
                learner.model, effects.get(name, []), learner.key, learner.check)
            learner.model.seq, learner.model.lineage = learner.fold.seq, learner.fold.lineage
            self.stats.model_seq[name] = learner.model.seq
            if name in newest:
                self.stats.observe_replica_lag(name, learner.fold.seq - seq_before[name],
                                               time.time() - newest[name] / 1000)
        if self._waiting:
            self.load_states()
