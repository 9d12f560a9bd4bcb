"""Replicas that catch up by loading the learner's state (``replica_catch_up = "state"``):
the record codec, and what a replica loads and refuses -- a state must verify (HMAC,
before unpickling) and the folded history must vouch for it."""

from __future__ import annotations

import dataclasses
import doctest
import json
import time
from typing import Any, NamedTuple, cast

import pytest

from riverbed.agents.learner import Learner
from riverbed.agents.replica import ReplicaFollower
from riverbed.streams import replica_state
from riverbed.streams.config import settings_from_dict
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import Claimed, Example, HistoryEvent
from riverbed.streams.history_codec import encode_event, record_headers
from riverbed.streams.models import OnlineModel
from riverbed.streams.replica_state import StateAssembler, encode_state, load_state
from riverbed.streams.snapshots import CHUNK_BYTES, SnapshotIntegrityError, fingerprint
from riverbed.streams.telemetry import WorkerStats

KEY = b"k" * 32
MODEL = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}],
         "replica_catch_up": "state", "replica_state_every_steps": 10}
SETTINGS = settings_from_dict({"models": [MODEL], "worker": {"scale_out": "replicas"}}, env={})


class _Record(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


def _state(estimator: Any = None, **place: Any) -> list[bytes]:
    values = dict(model="m", epoch=1, seq=5, lineage=0, fingerprint="f", time_ms=1)
    values.update(place)
    return encode_state(estimator if estimator is not None else {"w": 1.0}, KEY, **values)


def _assemble(values: list[bytes]) -> replica_state.ModelState:
    assembler = StateAssembler()
    states = [assembler.add(v) for v in values]
    assert states[:-1] == [None] * (len(values) - 1) and states[-1] is not None
    return states[-1]


def test_doctests() -> None:
    assert doctest.testmod(replica_state).failed == 0


def test_a_state_round_trips_in_chunks_under_the_record_limit() -> None:
    big = {"blob": b"x" * (2 * CHUNK_BYTES + 10)}
    values = _state(big)
    assert len(values) == 3 and all(len(v) < CHUNK_BYTES + 1024 for v in values)
    assert load_state(_assemble(values), KEY) == big


@pytest.mark.parametrize("change", ["payload", "seq", "model", "key", "hmac"])
def test_a_changed_or_moved_state_is_refused_before_unpickling(change: str) -> None:
    (value,) = _state()
    head, _, payload = value.partition(b"\n")
    meta = json.loads(head)
    if change == "hmac":  # any text read from the topic: a wrong signature, not an error
        meta["hmac"] = "\u00e9"
    elif change == "payload":
        payload = payload[:-1] + bytes([payload[-1] ^ 1])
    elif change in ("seq", "model"):
        meta[change] = 6 if change == "seq" else "other"
    state = _assemble([json.dumps(meta).encode() + b"\n" + payload])
    with pytest.raises(SnapshotIntegrityError):
        load_state(state, KEY if change != "key" else b"j" * 32)


@pytest.mark.parametrize("value", [b"", b"\xff\x00garbage", b'{"model": 1}\n', b"[]\nx",
                                   b'{"model":"m","state_id":"s","epoch":1,"seq":1,"lineage":0,'
                                   b'"fingerprint":"f","time_ms":1,"hmac":"h","index":3,'
                                   b'"count":2}\n'])
def test_any_bytes_that_are_not_a_state_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        StateAssembler().add(value)


def test_interleaved_states_are_assembled_each_from_its_own_parts() -> None:
    old = _state({"blob": b"o" * (CHUNK_BYTES + 1)}, seq=5)
    new = _state({"blob": b"n" * (CHUNK_BYTES + 1)}, seq=6)
    assembler = StateAssembler()
    assert assembler.add(old[0]) is None and assembler.add(new[0]) is None
    first, second = assembler.add(old[1]), assembler.add(new[1])
    assert first is not None and second is not None and (first.seq, second.seq) == (5, 6)
    assert load_state(second, KEY) == {"blob": b"n" * (CHUNK_BYTES + 1)}


def test_unfinished_states_are_bounded_per_model() -> None:
    assembler = StateAssembler()
    for seq in range(10):  # first halves only: never complete
        assert assembler.add(_state({"blob": b"x" * (CHUNK_BYTES + 1)}, seq=seq)[0]) is None
    assert len(assembler._parts["m"]) == StateAssembler.UNFINISHED


class _Replica:
    """A learner's history written in memory, and a replica following it by state."""

    def __init__(self) -> None:
        spec = SETTINGS.models[0]
        self.writer = Learner(OnlineModel(spec), cast(Any, None), cast(Any, None), KEY,
                              snapshot_every_steps=10**9, snapshot_every_s=1e9,
                              id_window=1000, probe_size=4)
        self.writer.epoch = 1
        self.history: list[HistoryEvent] = []
        self._write([self.writer.event(Claimed(self.writer.owner))])
        self.replica = Learner(OnlineModel(spec), cast(Any, None), cast(Any, None), KEY,
                               snapshot_every_steps=10**9, snapshot_every_s=1e9,
                               id_window=1000, probe_size=4)
        self.stats = WorkerStats()
        self.follower = ReplicaFollower(SETTINGS, [self.replica], self.stats)
        self.read = 0

    def _write(self, events: list[HistoryEvent]) -> None:
        for event in events:
            self.writer.fold.apply(event)
            self.history.append(dataclasses.replace(event, offset=len(self.history)))

    def learn(self, n: int) -> None:
        model = self.writer.model
        before = model.seq
        examples = [Example(f"e{before + i}", {"a": float(i % 5)}, int(i % 2 == 0))
                    for i in range(n)]
        for e in examples:
            model.learn(dict(e.x), e.y)
        self._write(self.writer.record_batch(before, examples, {"t:0": before + n}))

    def follow(self) -> None:
        records = [_Record(e.offset, b"m", v, record_headers(e, v, KEY))
                   for e, v in ((e, encode_event(e)) for e in self.history[self.read:])]
        self.read = len(self.history)
        self.follower.apply(records)

    def publish(self, values: list[bytes] | None = None) -> None:
        fold = self.writer.fold
        values = values or encode_state(
            self.writer.model.estimator, KEY, model="m", epoch=fold.epoch, seq=fold.seq,
            lineage=fold.lineage, fingerprint=fold.fingerprint or "",
            time_ms=int(time.time() * 1000))
        self.follower._waiting["m"] = _assemble(values)
        self.follower.load_states()

    def probe(self, estimator: Any) -> str:
        created = self.writer.fold.created
        return fingerprint(estimator, created.probe if created else ())


def test_a_replica_by_state_learns_nothing_and_loads_what_the_history_vouches_for() -> None:
    sim = _Replica()
    sim.learn(30)
    sim.follow()
    assert sim.replica.model.seq == 0 and sim.replica.fold.seq == 30  # no learn_one here
    sim.publish()  # the state at seq 30, vouched for by the Learned record ending there
    assert sim.replica.model.seq == 30
    assert sim.probe(sim.replica.model.estimator) == sim.probe(sim.writer.model.estimator)
    summary = sim.stats.replica_summary()["m"]
    assert summary["lag_steps"] == 30 and sim.stats.rejected_replica_states == 0


def test_a_state_waits_until_the_history_reaches_its_seq() -> None:
    sim = _Replica()
    sim.learn(10)
    sim.publish()  # the replica has not read the history yet
    assert sim.replica.model.seq == 0 and "m" in sim.follower._waiting
    sim.follow()  # the Learned record arrives: the waiting state is loaded
    assert sim.replica.model.seq == 10 and not sim.follower._waiting


def test_a_state_the_history_does_not_vouch_for_is_refused_and_counted() -> None:
    """A fenced learner's state (a fingerprint no Learned record has), a state from another
    key, and one at a seq where no Learned record ends: none is loaded."""
    sim = _Replica()
    sim.learn(20)
    sim.follow()
    fold = sim.writer.fold
    place = dict(model="m", epoch=fold.epoch, seq=fold.seq, lineage=fold.lineage,
                 time_ms=1)
    sim.publish(encode_state({"zombie": 1}, KEY, fingerprint="not-in-history", **place))
    sim.publish(encode_state(sim.writer.model.estimator, b"j" * 32,
                             fingerprint=fold.fingerprint or "", **place))
    sim.publish(encode_state(sim.writer.model.estimator, KEY, fingerprint=fold.fingerprint
                             or "", **{**place, "seq": 7}))
    assert sim.replica.model.seq == 0 and sim.stats.rejected_replica_states == 3
    assert sim.replica.model.estimator.__class__.__name__ == "LogisticRegression"


def test_a_forged_state_is_counted_even_when_it_is_not_newer() -> None:
    sim = _Replica()
    sim.learn(20)
    sim.follow()
    sim.publish()
    assert sim.replica.model.seq == 20
    fold = sim.writer.fold
    sim.publish(encode_state({"forged": 1}, b"j" * 32, model="m", epoch=fold.epoch, seq=20,
                             lineage=fold.lineage, fingerprint=fold.fingerprint or "",
                             time_ms=1))
    sim.publish()  # an authentic copy of what it has: nothing to do, nothing counted
    assert sim.replica.model.seq == 20 and sim.stats.rejected_replica_states == 1
    assert sim.probe(sim.replica.model.estimator) == sim.probe(sim.writer.model.estimator)


def test_states_of_models_not_followed_are_never_kept() -> None:
    """Parts under made-up model names held memory without bound."""
    assembler = StateAssembler({"m"})
    for n in range(50):
        first = _state({"blob": b"x" * (CHUNK_BYTES + 1)}, model=f"made-up-{n}")[0]
        assert assembler.add(first) is None
    assert assembler._parts == {}
    assert load_state(_assemble(_state()), KEY) == {"w": 1.0}
