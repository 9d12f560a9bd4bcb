"""The training path of scaled-out global models (issue riverbed 9): the record codec, the
refused configurations, and a deterministic simulation of the single-learner protocol --
replicas re-sending batches (at-least-once), learners crashing between learning and
appending, takeovers under new epochs and a fenced zombie still appending -- checked
against the one rule: every labelled example sent is learned exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import doctest
from typing import Any, NamedTuple, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riverbed.agents.learner import Learner
from riverbed.agents.training import TrainingLoop
from riverbed.streams import training
from riverbed.streams.config import Settings, settings_from_dict
from riverbed.streams.effects import apply_effects
from riverbed.streams.errors import ConfigError, DecodeError
from riverbed.streams.history import (
    Claimed,
    Example,
    HistoryEvent,
    Learned,
    examples_of,
    fold,
)
from riverbed.streams.models import OnlineModel
from riverbed.streams.telemetry import WorkerStats
from riverbed.streams.training import TrainingBatch, decode_training, encode_training

MODEL = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}]}
SETTINGS = settings_from_dict({"models": [MODEL], "worker": {"scale_out": "replicas"}}, env={})


def test_doctests() -> None:
    from riverbed.agents import training as training_agent
    assert doctest.testmod(training).failed == 0
    assert doctest.testmod(training_agent).failed == 0


def test_codec_round_trips_floats_exactly_and_refuses_garbage() -> None:
    x = {"a": 0.1 + 0.2, "b": 1e-300, "c": -123456.789012345678}
    batch = TrainingBatch("m", (Example("e", x, True), Example("f", {}, 2.5)),
                          {"events:3": 17}, (False, 1.0))
    decoded = decode_training(encode_training(batch))
    assert decoded == batch and decoded.examples[0].x == x
    for garbage in (b"", b"{}", b"[1]", b'{"model":"m","ids":["a"],"x":[],"y":[],"sources":{}}'):
        with pytest.raises(DecodeError):
            decode_training(garbage)


@pytest.mark.parametrize("worker,history", [
    ({"processing_guarantee": "exactly_once"}, {}),
    ({"model_per_partition": True}, {}),
    ({}, {"enabled": False}),
])
def test_replicas_refuse_what_they_do_not_support(worker: dict[str, Any],
                                                  history: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"models": [MODEL], "worker": {"scale_out": "replicas", **worker},
                            "history": history}, env={})
    assert info.value.field == "worker.scale_out"


class _Record(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


class _Sim:
    """The training partition and the history as lists; learners as in-memory objects."""

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.training: list[_Record] = []
        self.history: list[HistoryEvent] = []
        self.sent: set[str] = set()
        self.batches: list[TrainingBatch] = []
        self.next_id = 0

    def send(self, n: int, resend: int | None) -> None:
        """A replica sends ``n`` new examples; with ``resend``, first an earlier batch
        again (it died before committing the inputs of that batch)."""
        if resend is not None and self.batches:
            self._append(self.batches[resend % len(self.batches)])
        examples = tuple(Example(f"e{self.next_id + i}", {"a": float(i % 7)}, int(i % 3 == 0))
                         for i in range(n))
        self.next_id += n
        self.sent |= {e.event_id for e in examples}
        self.batches.append(TrainingBatch("m", examples, {"events:0": self.next_id}))
        self._append(self.batches[-1])

    def _append(self, batch: TrainingBatch) -> None:
        self.training.append(_Record(len(self.training), b"m", encode_training(batch)))

    def write(self, events: list[HistoryEvent]) -> None:
        for event in events:
            self.history.append(dataclasses.replace(event, offset=len(self.history)))

    def take_over(self) -> tuple[TrainingLoop, int]:
        """A new learner: fold the history, claim the next epoch; (loop, next offset)."""
        s = self.settings
        h = s.history
        learner = Learner(OnlineModel(s.models[0]), cast(Any, None), cast(Any, None), b"k" * 32,
                          snapshot_every_steps=10**9, snapshot_every_s=1e9,
                          id_window=h.id_window, probe_size=4)
        for event in self.history:
            effect = learner.fold.apply(event)
            if effect is not None:
                apply_effects(learner.model, [effect], learner.key)
        learner.model.seq = learner.fold.seq
        learner.epoch = learner.fold.epoch + 1
        claim = learner.event(Claimed(learner.owner))
        self.write([claim])
        learner.fold.apply(claim)
        loop = TrainingLoop(s, learner, asyncio.Lock(), WorkerStats())
        return loop, learner.fold.applied_offset(loop.source)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(1, 6), st.none() | st.integers(0, 50)),
    st.tuples(st.just("fetch"), st.integers(1, 4), st.booleans()),  # (records, crash)
    st.tuples(st.just("zombie"), st.integers(1, 4), st.just(False)),
), max_size=40))
def test_every_example_sent_is_learned_exactly_once(actions: list[tuple[Any, ...]]) -> None:
    sim = _Sim(SETTINGS)
    loop, position = sim.take_over()
    zombie: tuple[TrainingLoop, int] | None = None
    for kind, n, flag in actions:
        if kind == "send":
            sim.send(n, flag)
        elif kind == "fetch":
            records = sim.training[position: position + n]
            if not records:
                continue
            events = loop.learn(records)
            if flag:  # killed before its append: the history never sees these steps
                zombie = None
                loop, position = sim.take_over()
                continue
            sim.write(events)
            position = records[-1].offset + 1
        elif kind == "zombie":  # the former learner, paused past its lease, comes back
            if zombie is None:
                zombie = (loop, position)
                loop, position = sim.take_over()
            old, at = zombie
            records = sim.training[at: at + n]
            if records:
                sim.write(old.learn(records))
                zombie = (old, records[-1].offset + 1)
    while position < len(sim.training):  # the current learner drains the partition
        records = sim.training[position: position + 3]
        sim.write(loop.learn(records))
        position = records[-1].offset + 1
    state, effects = fold("m", sim.history)
    applied = [x.event_id for x in examples_of(effects)]
    assert len(applied) == len(set(applied))  # nothing learned twice
    assert set(applied) == sim.sent  # nothing lost
    assert state.seq == len(sim.sent) == loop.learner.model.seq


async def test_a_replica_drops_the_early_labels_of_a_partition_it_lost() -> None:
    """An early label (its event not seen yet) of a partition that moved to another worker
    must not expire here as ``unknown_event_id``: the new owner joins it."""
    from riverbed.agents.labels import LabelJoin
    from riverbed.agents.ownership import ModelOwnership
    from riverbed.agents.pending_labels import PendingLabels
    from riverbed.agents.supervision import Supervisor

    async def crash(exc: BaseException) -> None:
        raise AssertionError(f"crashed: {exc!r}")

    join = LabelJoin(SETTINGS)
    stats = WorkerStats()
    pending = PendingLabels(SETTINGS, join, cast(Any, None), stats)
    ownership = ModelOwnership(SETTINGS, stats, cast(Any, None), cast(Any, None),
                               new_learner=None, pending=pending,
                               supervisor=Supervisor(crash), crash=crash, lock=asyncio.Lock())
    ownership._assigned = {0, 1}
    for partition in (0, 1):
        join.store.add_label(f"e{partition}", True, 0, 0,
                             origin=(SETTINGS.topics.labels, partition, 7))
    await ownership.on_assigned({0})  # partition 1 moved away, nothing gained
    assert set(join.store.labels) == {"e0"}
    assert stats.partitions == [0]


def test_a_backlog_is_learned_in_records_no_larger_than_an_inference_batch() -> None:
    """A learner taking over reads everything sent meanwhile in one fetch: its examples go
    to the history in Learned records of at most limits.max_batch_records (one record for
    all of them exceeded the broker's message size on Apache Kafka)."""
    limits = dataclasses.replace(SETTINGS.limits, max_batch_records=250)
    sim = _Sim(dataclasses.replace(SETTINGS, limits=limits))
    for n in range(12):  # 12 records of 100 examples: 1,200 examples in one fetch
        sim._append(TrainingBatch("m", tuple(
            Example(f"e{n}-{i}", {"a": float(i)}, int(i % 2 == 0)) for i in range(100)),
            {"events:0": (n + 1) * 100}, (None,) * 100))
    loop, position = sim.take_over()
    events = loop.learn(sim.training[position:])
    sim.write(events)
    learned = [e.body for e in events if isinstance(e.body, Learned)]
    assert len(learned) == 6 and all(len(b.examples) <= 250 for b in learned)
    assert [b.seq_from for b in learned] == [1, 201, 401, 601, 801, 1001]  # contiguous
    assert learned[-1].seq_to == 1200 and learned[-1].offsets == {loop.source: 12}
    state, effects = fold("m", sim.history)
    assert state.seq == 1200 and len({x.event_id for x in examples_of(effects)}) == 1200


def test_hostile_training_records_never_reach_the_model() -> None:
    """The training topic is read like any input: an example with a label the model cannot
    learn, or a non-finite feature, is skipped and counted; the model learns only
    the valid one (the old loop passed them to learn_one and crashed the learner)."""
    sim = _Sim(SETTINGS)
    bad = [Example("bad-label", {"a": 1.0}, "oops"), Example("nan", {"a": float("nan")}, 1),
           Example("huge", {"a": 1e300}, 1), Example("list", {"a": 1.0}, [1]),
           Example("x" * 257, {"a": 1.0}, 1), Example("good", {"a": 1.0}, 1)]
    sim._append(TrainingBatch("m", tuple(bad), {"events:0": 6}, (None,) * 6))
    loop, position = sim.take_over()
    before = loop.learner.model.seq
    events = loop.learn(sim.training[position:])
    learned = [e.body for e in events if isinstance(e.body, Learned)]
    assert [x.event_id for b in learned for x in b.examples] == ["good"]
    assert loop.learner.model.seq == before + 1 and loop.invalid_examples == 5


def test_a_fetch_is_learned_in_runs_of_bounded_size() -> None:
    """A learner taking over a backlog fetched up to 200 records and learned them in one go,
    blocking its event loop for seconds (a fresh-clone CI run: the new learner's pages did
    not answer): a fetch is learned in runs of at most LEARN_CHUNK_BYTES (one record at
    least), every record once, in order."""
    from riverbed.agents.training import LEARN_CHUNK_BYTES, chunked
    records = [_Record(i, b"m", b"x" * size) for i, size in enumerate(
        [LEARN_CHUNK_BYTES // 3] * 7 + [2 * LEARN_CHUNK_BYTES, 10])]
    runs = chunked(records, LEARN_CHUNK_BYTES)
    assert [r.offset for run in runs for r in run] == list(range(len(records)))
    assert all(len(run) == 1 or sum(len(r.value or b"") for r in run) <= LEARN_CHUNK_BYTES
               for run in runs)
    assert [len(run) for run in runs] == [3, 3, 1, 1, 1]
    assert chunked([], LEARN_CHUNK_BYTES) == []
