"""History against the broker: zombie fencing, replay --verify, tampered snapshots."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from riverbed.agents.learner import Learner
from riverbed.streams.config import Settings
from riverbed.streams.history import Example, HistoryEvent, SnapshotChunk, examples_of, fold
from riverbed.streams.history_codec import encode_event, record_headers
from riverbed.streams.history_log import HistoryLog, SnapshotIndex
from riverbed.streams.models import OnlineModel
from riverbed.streams.output import BatchProducer
from riverbed.streams.produce import produce
from riverbed.streams.replay import read_model_history
from tests.conftest import CONFIG, ROOT
from tests.helpers import provision, running_worker, worker_env

pytestmark = pytest.mark.integration
KEY = os.urandom(32)


def _learner(settings: Settings, producer: BatchProducer) -> Learner:
    history = HistoryLog.of(settings, producer, KEY)
    index = SnapshotIndex(settings.broker, settings.topics.snapshots, producer)
    return Learner(OnlineModel(settings.models[0]), history, index, KEY,
                   snapshot_every_steps=10**9, snapshot_every_s=1e9, id_window=1000,
                   probe_size=4)


async def test_zombie_learner_writes_are_ignored_and_counted(settings: Settings) -> None:
    await provision(settings)
    producer = BatchProducer(settings.broker)
    await producer.start()
    try:
        old, new = _learner(settings, producer), _learner(settings, producer)
        await old.takeover()
        await new.takeover()
        assert (old.epoch, new.epoch) == (1, 2)
        for learner, ids in ((old, ["zombie-1", "zombie-2"]), (new, ["fresh-1"])):
            examples = [Example(i, {"a": 1.0}, True) for i in ids]
            events = learner.record_batch(0, examples, {"events:0": len(ids)})
            await learner.history.append(events)
    finally:
        await producer.stop()
    state, effects = fold(settings.models[0].name,
                          await read_model_history(settings, settings.models[0].name))
    assert [x.event_id for x in examples_of(effects)] == ["fresh-1"]
    assert state.counters.stale_writes == 1 and state.epoch == 2 and state.seq == 1


def _replay_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(settings, KEY.hex())
    return subprocess.run([sys.executable, "-m", "riverbed.cli", "replay",
                           settings.models[0].name, "-c", str(CONFIG), "--json", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_replay_verifies_and_a_flipped_snapshot_byte_is_an_integrity_error(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, history=dataclasses.replace(
        settings.history, snapshot_every_steps=1500, snapshot_key=KEY.hex()))
    await provision(settings)
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal", 6000, seed=3)
        learner = worker.learners[0]  # type: ignore[index]
        import asyncio
        import time
        deadline = time.monotonic() + 60
        while learner.durable_seq < report.valid and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        live_fingerprint = worker.describe_models()[settings.models[0].name]["fingerprint"]
    for args in (["--verify", "--from-genesis"], ["--verify"]):
        done = _replay_cli(settings, *args)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert done.returncode == 0, done.stderr
        assert summary["ok"] and summary["seq"] == report.valid
        assert summary["fingerprint"] == live_fingerprint
    genesis = json.loads(
        _replay_cli(settings, "--verify", "--from-genesis").stdout.splitlines()[-1])
    assert genesis["snapshots_checked"] >= 2 and genesis["fingerprints_verified"] > 5
    middle = json.loads(_replay_cli(settings, "--to-seq", "2500").stdout.splitlines()[-1])
    assert middle["seq"] == 2500

    # from every snapshot: replay starting at each one reproduces every later fingerprint
    from riverbed.streams.replay import replay
    state, _ = fold(settings.models[0].name,
                    await read_model_history(settings, settings.models[0].name))
    snapshot_seqs = [s.seq for s in state.snapshots]
    assert len(snapshot_seqs) >= 3
    for seq in snapshot_seqs:
        target = min(seq + 1000, report.valid)
        rebuilt = await replay(settings, settings.models[0].name, KEY, to_seq=target,
                               verify=True)
        expected = max(s for s in snapshot_seqs if s <= target)  # newest at or before target
        assert rebuilt.started_from.endswith(f"at seq {expected}")
        assert rebuilt.mismatches == [] and rebuilt.fold.seq == target

    # copy the history into a fresh topic with one byte flipped inside a snapshot chunk
    events = await read_model_history(settings, settings.models[0].name)
    tampered_topic = settings.topics.history + ".tampered"
    tampered = dataclasses.replace(settings, topics=dataclasses.replace(
        settings.topics, history=tampered_topic))
    await provision(tampered)
    producer = BatchProducer(settings.broker)
    await producer.start()
    try:
        flipped = False
        for event in events:
            body = event.body
            if isinstance(body, SnapshotChunk) and not flipped:
                data = bytearray(body.data)
                data[len(data) // 2] ^= 0x01
                event = HistoryEvent(event.model, event.epoch, event.time,
                                     dataclasses.replace(body, data=bytes(data)))
                flipped = True
            value = encode_event(event)  # signed: only the snapshot's own HMAC can tell
            await (await producer.producer.send(  # type: ignore[union-attr]
                tampered_topic, value, key=event.model.encode(), partition=0,
                headers=record_headers(event, value, KEY)))
    finally:
        await producer.stop()
    for args in (["--verify", "--from-genesis"], ["--verify"]):
        done = _replay_cli(tampered, *args)
        assert done.returncode != 0
        assert "integrity" in done.stderr.lower() or "HMAC" in done.stdout
