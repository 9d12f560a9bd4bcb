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
from pathlib import Path
from typing import Any

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.history import examples_of, fold
from riverbed.streams.replay import read_model_history
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


async def _models(child: WorkerChild) -> dict[str, Any]:
    page = await asyncio.to_thread(child.get, "/riverbed/models")
    assert page is not None, "worker does not answer"
    return {m: page[m] for m in MODELS}


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
