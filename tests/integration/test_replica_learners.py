"""Scale-out with prediction replicas and two global models (issue riverbed 9, point 2):
each model's learner is the worker holding its training partition, so two workers learn
one model each. A learner is SIGKILLed (the survivor learns both), then a worker joins
(one model moves back to it: the former learner hands it over and serves it as a
replica). Every event is predicted by both models, each model learns every labelled id
once, ``replay --verify`` passes and every replica ends with its learner's fingerprint."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.history import examples_of, fold
from riverbed.streams.replay import read_model_history
from riverbed.streams.replica_state import encode_state
from riverbed.streams.training import training_partition
from tests.conftest import CONFIG, ROOT
from tests.helpers import PredictionCounter, WorkerChild, provision, send_raw, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]
EVENTS = 10_000
MODELS = ("agrawal-lr", "agrawal-lr-b")
SECOND_MODEL = '''
[[models]]
name = "agrawal-lr-b"
task = "classification"
seed = 7
pipeline = [
  { "preprocessing.StandardScaler" = {} },
  { "linear_model.LogisticRegression" = { l2 = 0.001 } },
]
'''


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "two-models.toml"
    config.write_text(CONFIG.read_text() + SECOND_MODEL)
    return config


async def _stats(children: list[WorkerChild]) -> list[dict[str, Any] | None]:
    for child in children:
        assert child.process.poll() is None, f"worker died: {child.process.returncode}"
    return [await asyncio.to_thread(c.get, "/riverbed/stats") for c in children]


async def _learners(children: list[WorkerChild], balanced: bool, timeout_s: float
                    ) -> dict[str, WorkerChild]:
    """Wait until every model has exactly one learner among ``children`` (with
    ``balanced``: no worker learns both) and the inputs are spread over all of them;
    returns model -> its learner."""
    deadline = time.monotonic() + timeout_s
    stats: list[dict[str, Any] | None] = []
    while time.monotonic() < deadline:
        stats = await _stats(children)
        if all(s is not None for s in stats):
            learning = [list(s["learning"]) for s in stats if s is not None]
            every = sorted(m for lr in learning for m in lr)
            parts = sorted(p for s in stats if s is not None for p in s["partitions"])
            if (every == sorted(MODELS) and parts == [0, 1, 2, 3]
                    and all(s["partitions"] for s in stats if s is not None)
                    and (not balanced or max(len(lr) for lr in learning) == 1)):
                return {m: c for c, lr in zip(children, learning, strict=True) for m in lr}
        await asyncio.sleep(0.1)
    raise AssertionError(f"no learner per model before the deadline: {stats}")


def _metrics(child: WorkerChild) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{child.port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def _models(child: WorkerChild) -> dict[str, Any]:
    page = await asyncio.to_thread(child.get, "/riverbed/models")
    assert page is not None, "worker does not answer"
    return {m: page[m] for m in MODELS if m in page}


async def test_each_model_is_learned_by_the_holder_of_its_training_partition(
    settings: Settings, tmp_path: Path,
) -> None:
    assert len({training_partition(m, settings.topics.partitions) for m in MODELS}) == 2
    await provision(settings)
    config = _config(tmp_path)
    env = {**worker_env(settings, os.urandom(32).hex()), "RIVERBED_WORKER__SCALE_OUT": "replicas",
           "RIVERBED_WORKER__LEASE_SESSION_TIMEOUT_MS": "6000"}
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", EVENTS, seed=11))
    ids = {e["event_id"] for e in stream}

    async def send(chunk: slice) -> None:
        await send_raw(settings, [(e["key"].encode(), codec.encode(e)) for e in stream[chunk]],
                       partition=None)

    async def learned(learners: dict[str, WorkerChild], seq: int, field: str = "seq") -> None:
        deadline = time.monotonic() + 120
        for model, child in learners.items():
            while (await _models(child))[model][field] < seq:
                assert time.monotonic() < deadline, (model, await _models(child))
                await asyncio.sleep(0.05)

    children = [WorkerChild(env, config) for _ in range(2)]
    try:
        async with PredictionCounter(settings) as predictions:
            learners = await _learners(children, balanced=True, timeout_s=90)
            for child in children:  # Prometheus says which worker learns which model
                text = await asyncio.to_thread(_metrics, child)
                for model in MODELS:
                    flag = "1.0" if learners[model] is child else "0.0"
                    assert f'riverbed_learner{{model="{model}"}} {flag}' in text, text
                # ready (200) as a learner as well as a replica: restored and connected
                ready = await asyncio.to_thread(child.get, "/readyz")
                assert ready is not None and ready["ready"] is True, ready
                assert ready["checks"]["role"] == "learner", ready
            await send(slice(0, 6000))
            await learned(learners, 2000)
            victim = learners[MODELS[0]]                         # 1. SIGKILL a learner
            victim.kill()
            children.remove(victim)
            learners = await _learners(children, balanced=False, timeout_s=90)
            await learned(learners, 6000)  # the survivor learns both (the rest of 6,000)
            children.append(WorkerChild(env, config))            # 2. a worker joins
            learners = await _learners(children, balanced=True, timeout_s=90)
            await send(slice(6000, EVENTS))
            deadline = time.monotonic() + 180
            while not (await predictions.at_least(EVENTS * len(MODELS))):
                assert time.monotonic() < deadline, f"{len(predictions.seen)} predicted"
                await _stats(children)  # fails fast if one died
            await learned(learners, EVENTS, "durable_seq")
            finals = {m: (await _models(c))[m] for m, c in learners.items()}
            deadline = time.monotonic() + 60
            while True:  # every replica follows its learner to the end
                pages = [await _models(c) for c in children]
                if all(p[m]["seq"] == finals[m]["seq"] for p in pages for m in MODELS):
                    break
                assert time.monotonic() < deadline, pages
                await asyncio.sleep(0.1)
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()
    assert {(eid, m) for eid in ids for m in MODELS} == set(predictions.seen)
    for model in MODELS:
        assert finals[model]["seq"] == EVENTS
        assert {p[model]["fingerprint"] for p in pages} == {finals[model]["fingerprint"]}
        state, effects = fold(model, await read_model_history(settings, model))
        applied = [x.event_id for x in examples_of(effects)]
        assert len(applied) == len(set(applied)) == EVENTS  # nothing learned twice
        assert set(applied) == ids  # nothing lost
        # the first model's learner was killed (its successor claims epoch 2), then the
        # model moved to the joining worker (epoch 3); the second stayed where it was
        assert state.epoch >= (3 if model == MODELS[0] else 1)
        assert state.counters.gap_writes == 0
        verify = subprocess.run([sys.executable, "-m", "riverbed.cli", "replay", model,
                                 "-c", str(config), "--verify", "--json"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=180)
        assert verify.returncode == 0, verify.stdout + verify.stderr


BY_STATE = '''
replica_catch_up = "state"
replica_state_every_steps = 500
replica_state_every_s = 0.5
'''


async def test_replicas_by_state_load_only_states_the_history_vouches_for(
    settings: Settings, tmp_path: Path,
) -> None:
    """``replica_catch_up = "state"``: the replica follows its learner by loading the
    published states and ends at the learner's seq and fingerprint; garbage, a state signed
    with another key and a state the history has no Learned record of (a fenced learner's)
    are refused and counted; the replica takes over when the learner is SIGKILLed, and the
    history holds every example once."""
    model = MODELS[0]
    await provision(settings)
    config = tmp_path / "by-state.toml"
    text = CONFIG.read_text()
    head, _, tail = text.partition('name = "agrawal-lr"\n')
    config.write_text(head + 'name = "agrawal-lr"\n' + BY_STATE + tail)
    key_hex = os.urandom(32).hex()
    env = {**worker_env(settings, key_hex), "RIVERBED_WORKER__SCALE_OUT": "replicas",
           "RIVERBED_WORKER__LEASE_SESSION_TIMEOUT_MS": "6000"}
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 8000, seed=12))

    async def send(chunk: slice) -> None:
        await send_raw(settings, [(e["key"].encode(), codec.encode(e)) for e in stream[chunk]],
                       partition=None)

    async def page(child: WorkerChild) -> dict[str, Any]:
        return dict((await _models(child))[model])

    async def until(child: WorkerChild, field: str, value: int) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while (state := await page(child))[field] != value:
            assert time.monotonic() < deadline, (field, value, state)
            await asyncio.sleep(0.05)
        return state

    children = [WorkerChild(env, config) for _ in range(2)]
    try:
        async with PredictionCounter(settings) as predictions:
            deadline = time.monotonic() + 90
            while True:
                stats = await _stats(children)
                if all(s is not None and s["partitions"] for s in stats) and sorted(
                        m for s in stats if s is not None for m in s["learning"]) == [model]:
                    break
                assert time.monotonic() < deadline, stats
                await asyncio.sleep(0.1)
            learner, replica = (children if stats[0] and stats[0]["learning"]
                                else children[::-1])
            await send(slice(0, 6000))
            final = await until(learner, "durable_seq", 6000)
            loaded = await until(replica, "seq", 6000)  # the last state of the lull
            assert loaded["fingerprint"] == final["fingerprint"]
            fingerprint = str(final["fingerprint"])
            key = bytes.fromhex(key_hex)
            place = dict(model=model, epoch=1, seq=6000, lineage=0, time_ms=1)
            hostile = [b"\xff garbage", *encode_state({"forged": 1}, os.urandom(32),
                                                      fingerprint=fingerprint, **place),
                       *encode_state({"zombie": 1}, key, fingerprint="a fenced learner's",
                                     **place)]
            await send_raw(settings, [(model.encode(), v) for v in hostile],
                           topic=settings.topics.replica_state)
            deadline = time.monotonic() + 60
            while (await _stats([replica]))[0]["rejected_replica_states"] != 3:  # type: ignore[index]
                assert time.monotonic() < deadline, await _stats([replica])
                await asyncio.sleep(0.05)
            after = await page(replica)
            assert (after["seq"], after["fingerprint"]) == (6000, fingerprint)
            replica_stats = (await _stats([replica]))[0]
            assert replica_stats is not None and replica_stats["replicas"][model]["samples"] > 0
            learner.kill()                                        # the replica takes over
            children.remove(learner)
            deadline = time.monotonic() + 90
            while (await _stats(children))[0]["learning"] != [model]:  # type: ignore[index]
                assert time.monotonic() < deadline, await _stats(children)
                await asyncio.sleep(0.1)
            await send(slice(6000, 8000))
            await until(replica, "durable_seq", 8000)
            deadline = time.monotonic() + 120
            while not (await predictions.at_least(8000)):
                assert time.monotonic() < deadline, f"{len(predictions.seen)} predicted"
                await _stats(children)
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()
    assert {eid for eid, _ in predictions.seen} == {e["event_id"] for e in stream}
    state, effects = fold(model, await read_model_history(settings, model))
    applied = [x.event_id for x in examples_of(effects)]
    assert len(applied) == len(set(applied)) == 8000  # nothing learned twice, nothing lost
    assert state.epoch >= 2
    verify = subprocess.run([sys.executable, "-m", "riverbed.cli", "replay", model,
                             "-c", str(config), "--verify", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert verify.returncode == 0, verify.stdout + verify.stderr
