"""Crash test: SIGKILL the worker three times mid-stream; learning stays exactly-once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.effects import apply_effects
from riverbed.streams.history import examples_of, fold
from riverbed.streams.models import OnlineModel
from riverbed.streams.replay import read_model_history, replay
from riverbed.streams.snapshots import fingerprint
from tests.helpers import WorkerChild, provision, send_raw, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]
EVENTS = 50_000
DUPLICATES = 500


async def test_sigkill_three_times_learns_each_labelled_event_exactly_once(
    settings: Settings,
) -> None:
    key_hex = os.urandom(32).hex()
    settings = dataclasses.replace(settings, history=dataclasses.replace(
        settings.history, snapshot_key=key_hex))
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", EVENTS, seed=21))
    rng = random.Random(4)
    records = [(e["key"].encode(), codec.encode(e)) for e in stream]
    for index in rng.sample(range(EVENTS), DUPLICATES):  # producer retries: same event twice
        records.insert(rng.randrange(index, EVENTS), records[index])
    env = worker_env(settings, key_hex)
    worker = WorkerChild(env)
    sender = asyncio.create_task(_send_slowly(settings, records))
    try:
        for kill in range(3):
            target = rng.randrange(4_000, 12_000) * (kill + 1)
            await worker.wait_for(lambda m, t=target: m["seq"] >= t, 120)
            worker.kill()
            worker = WorkerChild(env)
        await sender
        live = await worker.wait_for(lambda m: m["durable_seq"] >= EVENTS, 180)
    finally:
        if worker.process.poll() is None:
            worker.kill()
        sender.cancel()
    history = await read_model_history(settings, "agrawal-lr")
    state, effects = fold("agrawal-lr", history)
    applied = [x.event_id for x in examples_of(effects)]
    assert state.epoch == 4 and live["epoch"] == 4          # 1 start + 3 restarts
    assert len(applied) == len(set(applied)) == EVENTS       # no event learned twice
    assert set(applied) == {e["event_id"] for e in stream}   # and none lost
    assert live["seq"] == state.seq == EVENTS
    oracle = OnlineModel(settings.models[0])                 # fold in this (fresh) process
    apply_effects(oracle, effects, bytes.fromhex(key_hex))
    assert state.created is not None
    assert fingerprint(oracle.estimator, state.created.probe) == live["fingerprint"]
    verified = await replay(settings, "agrawal-lr", bytes.fromhex(key_hex), verify=True,
                            from_genesis=True)
    assert verified.mismatches == [] and verified.verified > 10


async def _send_slowly(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    for start in range(0, len(records), 2_000):
        await send_raw(settings, records[start : start + 2_000], partition=None)
        await asyncio.sleep(0.1)  # pacing so that kills land mid-stream, not synchronisation
