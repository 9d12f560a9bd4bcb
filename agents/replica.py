"""Prediction replicas follow the history (``worker.scale_out = "replicas"``).

A replica is a global model on a worker that does not hold the lease: it predicts, and
its state is the fold of the history, kept current by :class:`ReplicaFollower` re-applying
every ``Learned`` record's examples (exact: the replica reaches the learner's very state
and fingerprint, at the cost of the learn CPU on every replica; ``bench/replicas.py``
measures it against loading snapshots).

Staleness, per model (``riverbed_replica_lag_steps`` / ``..._seconds``, and under
``replicas`` in ``/riverbed/stats``): at each fetch of the history that brings ``Learned``
records, the learn steps the replica was behind (steps applied by that fetch) and the age
of the newest one applied (now minus the time the learner built it).

Delivery guarantee: none needed -- it only reads. Each fetch is applied synchronously
(no await between folding a record and setting ``model.seq``), so a prediction always
reports the ``model_seq`` and ``lineage`` of the exact state that made it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from riverbed.agents.learner import Learner
from riverbed.streams.config import Settings
from riverbed.streams.effects import apply_effects
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import Learn, Learned, Load
from riverbed.streams.history_codec import decode_event
from riverbed.streams.kafka_clients import PartitionReader, Record
from riverbed.streams.telemetry import WorkerStats


class ReplicaFollower:
    """Keeps ``learners``' models (replicas: nobody learns them here) at the history's
    end; cancel it before one of them is claimed (the learner continues from its fold)."""

    def __init__(self, settings: Settings, learners: Sequence[Learner],
                 stats: WorkerStats) -> None:
        self.settings, self.learners, self.stats = settings, list(learners), stats

    async def run(self) -> None:
        """Follow until cancelled."""
        tp = TopicPartition(self.settings.topics.history, 0)
        start = {tp: min(lr.history_position for lr in self.learners)}
        async with PartitionReader(self.settings.broker, [tp], start=start,
                                   fetch_max_wait_ms=20) as reader:
            while True:
                self.apply((await reader.fetch(500)).get(tp, []))

    def apply(self, records: Sequence[Record]) -> None:
        """Fold one fetch into every replica; record its staleness. Synchronous."""
        by_name = {lr.model.name: lr for lr in self.learners}
        effects: dict[str, list[Learn | Load]] = {}
        seq_before = {name: lr.fold.seq for name, lr in by_name.items()}
        newest: dict[str, int] = {}
        for record in records:
            try:
                event = decode_event(record.value or b"", record.offset)
            except DecodeError:
                continue  # not ours or damaged: every fold skips it too
            learner = by_name.get(event.model)
            if learner is None or record.offset < learner.history_position:
                continue
            effect = learner.fold.apply(event)
            if effect is not None:
                effects.setdefault(event.model, []).append(effect)
            if isinstance(event.body, Learned):
                newest[event.model] = event.time
        for learner in self.learners:
            if records:
                learner.history_position = max(learner.history_position,
                                               records[-1].offset + 1)
            name = learner.model.name
            apply_effects(learner.model, effects.get(name, []), learner.key)
            learner.model.seq, learner.model.lineage = learner.fold.seq, learner.fold.lineage
            learner.durable_seq = learner.fold.seq  # read from the history: durable
            self.stats.model_seq[name] = learner.model.seq
            if name in newest:
                self.stats.observe_replica_lag(name, learner.fold.seq - seq_before[name],
                                               time.time() - newest[name] / 1000)
