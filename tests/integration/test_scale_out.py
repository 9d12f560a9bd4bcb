"""Scale-out: two workers with one model per partition split the partitions; every event
is learned exactly once by its partition's model, also after one of them is SIGKILLed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import defaultdict
from typing import Any

import pytest

from riverbed.agents.learner import Learner
from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.errors import TakeoverError
from riverbed.streams.history import examples_of, fold
from riverbed.streams.partitioner import partition_for
from riverbed.streams.replay import read_model_history
from tests.helpers import WorkerChild, provision, running_worker, send_raw, until, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]
SHARDS = [f"agrawal-lr@p{p}" for p in range(4)]


async def _wait(predicate: Any, workers: list[WorkerChild], page: str, timeout_s: float
                ) -> list[dict[str, Any]]:
    """Poll every worker's ``page`` until ``predicate(pages)`` holds (deadline)."""
    deadline = time.monotonic() + timeout_s
    pages: list[Any] = []
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.process.poll() is None, f"worker died: {worker.process.returncode}"
        pages = [await asyncio.to_thread(w.get, page) for w in workers]
        if all(p is not None for p in pages) and predicate(pages):
            return pages
        await asyncio.sleep(0.05)
    stats = [await asyncio.to_thread(w.get, "/riverbed/stats") for w in workers]
    for worker in workers:
        worker.dump_tasks()
    raise AssertionError(f"condition not reached before the deadline; last pages {pages}; "
                         f"stats {stats}")


def _seqs(pages: list[dict[str, Any]]) -> dict[str, int]:
    return {name: model["durable_seq"] for page in pages for name, model in page.items()}


async def test_two_workers_split_partitions_each_learning_its_own_once(
    settings: Settings,
) -> None:
    await _scenario(settings, kill=False)


async def test_a_survivor_takes_over_a_killed_workers_partitions(settings: Settings) -> None:
    await _scenario(settings, kill=True)


async def _scenario(settings: Settings, kill: bool) -> None:
    """Two workers split 4 partitions and learn 8,000 events; with ``kill``, one is then
    SIGKILLed and 4,000 more go to the survivor. Every event is learned exactly once, by
    its partition's model."""
    await provision(settings)
    key_hex = os.urandom(32).hex()
    env = {**worker_env(settings, key_hex), "RIVERBED_WORKER__MODEL_PER_PARTITION": "true"}
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 12_000 if kill else 8000, seed=8))
    expected: dict[str, set[str]] = defaultdict(set)
    for event in stream:
        expected[f"agrawal-lr@p{partition_for(event['key'].encode(), 4)}"].add(event["event_id"])
    first, second = WorkerChild(env), WorkerChild(env)
    try:
        split = await _wait(lambda s: all(p["partitions"] for p in s) and sorted(
            s[0]["partitions"] + s[1]["partitions"]) == [0, 1, 2, 3],
            [first, second], "/riverbed/stats", 90)
        await send_raw(settings, [(e["key"].encode(), codec.encode(e)) for e in stream[:8000]],
                       partition=None)
        served = await _wait(lambda s: sum(_seqs(s).values()) >= 8000,
                             [first, second], "/riverbed/models", 90)
        for page, stats in zip(served, split, strict=True):  # each serves its own partitions
            assert sorted(page) == [f"agrawal-lr@p{p}" for p in stats["partitions"]]
        final = {name: model for page in served for name, model in page.items()}
        if kill:
            second.kill()  # its partitions move to the survivor, which takes over their history
            await send_raw(settings, [(e["key"].encode(), codec.encode(e))
                                      for e in stream[8000:]], partition=None)
            (final,) = await _wait(lambda s: sorted(s[0]) == SHARDS and sum(
                _seqs(s).values()) >= 12_000, [first], "/riverbed/models", 120)
    finally:
        for worker in (first, second):
            if worker.process.poll() is None:
                worker.kill()
    assert sum(_seqs([final]).values()) == len(stream)
    for shard in SHARDS:
        state, effects = fold(shard, await read_model_history(settings, shard))
        applied = [x.event_id for x in examples_of(effects)]
        assert len(applied) == len(set(applied))               # none learned twice
        assert set(applied) == expected[shard], shard          # only its partition, none lost
        assert final[shard]["seq"] == state.seq == len(expected[shard])


async def test_a_survivor_takes_over_pending_events_and_learns_their_late_labels(
    settings: Settings,
) -> None:
    """Unlabelled events wait in the pending store of their partition's owner; that owner
    is SIGKILLed; the survivor rebuilds those pending events from the pending log when it
    takes the partitions over, so the labels sent afterwards are all learned, once."""
    await provision(settings)
    env = {**worker_env(settings, os.urandom(32).hex()),
           "RIVERBED_WORKER__MODEL_PER_PARTITION": "true"}
    codec, label_codec = AvroCodec(load_schema("agrawal_event")), AvroCodec(load_schema("label"))
    stream = list(events("agrawal", 4000, seed=9, label_fraction=0.0))
    truth = list(events("agrawal", 4000, seed=9))
    expected: dict[str, set[str]] = defaultdict(set)
    for event in stream:
        expected[f"agrawal-lr@p{partition_for(event['key'].encode(), 4)}"].add(event["event_id"])
    first, second = WorkerChild(env), WorkerChild(env)
    try:
        split = await _wait(lambda s: all(p["partitions"] for p in s), [first, second],
                            "/riverbed/stats", 90)
        await send_raw(settings, [(e["key"].encode(), codec.encode(e)) for e in stream],
                       partition=None)
        await _wait(lambda s: sum(sum(p["predictions"].values()) for p in s) >= len(stream),
                    [first, second], "/riverbed/stats", 90)
        second.kill()
        await send_raw(settings, partition=None, topic=settings.topics.labels, records=[
            (e["key"].encode(), label_codec.encode(
                {"event_id": e["event_id"], "label": t["label"], "time": e["timestamp"] + 5}))
            for e, t in zip(stream, truth, strict=True)])
        (final,) = await _wait(lambda s: sorted(s[0]) == SHARDS and sum(
            _seqs(s).values()) >= len(stream), [first], "/riverbed/models", 120)
    finally:
        for worker in (first, second):
            if worker.process.poll() is None:
                worker.kill()
    assert split[1]["partitions"]  # the killed worker did own partitions (and their pending)
    assert sum(_seqs([final]).values()) == len(stream)
    for shard in SHARDS:
        _, effects = fold(shard, await read_model_history(settings, shard))
        applied = [x.event_id for x in examples_of(effects)]
        assert sorted(applied) == sorted(expected[shard]), shard  # each once, none lost


async def test_a_failed_takeover_stops_the_worker_with_a_clear_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If taking over a partition's models fails (here: the history cannot be read), the
    worker stops with TakeoverError instead of fetching partitions no model serves."""
    await provision(settings)
    per_partition = dataclasses.replace(
        settings, worker=dataclasses.replace(settings.worker, model_per_partition=True))

    async def unreadable_history(self: Learner) -> None:
        raise TimeoutError("riverbed.history: no progress at offset 0")

    monkeypatch.setattr(Learner, "takeover", unreadable_history)
    async with running_worker(per_partition) as worker:
        await until(lambda: worker.app.crashed, 30)
        reason = worker.app.crash_reason
    assert isinstance(reason, TakeoverError)
    assert "no progress at offset 0" in str(reason)
    assert worker.processor.models == []  # nothing was served, so nothing was committed
