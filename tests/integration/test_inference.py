"""The inference agent against the embedded broker: predictions out, bad input dead-lettered."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.produce import produce
from tests.conftest import unique_settings
from tests.helpers import (
    collect,
    commit_as_group,
    provision,
    running_worker,
    send_raw,
    until,
)

pytestmark = pytest.mark.integration


async def test_one_prediction_per_valid_event(settings: Settings) -> None:
    await provision(settings)
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal", 3000, bad_fraction=0.02, seed=11)
        predictions = await collect(settings, settings.topics.predictions, 4, report.valid,
                                    settle_s=1.0)
        dead = await collect(settings, settings.topics.dead_letters, 1, report.bad, settle_s=0.5)
        faust_dir = worker.app.conf.datadir  # Faust's own data: not in the working directory
        assert (faust_dir / "v1" / "tables").is_dir()
        assert not (Path.cwd() / f"{settings.worker.group_id}.app-data").exists()
    assert not faust_dir.exists()  # removed when the worker stopped
    decoder = AvroCodec(load_schema("prediction"))
    decoded = [decoder.decode(r.value) for r in predictions]
    assert len(decoded) == report.valid
    assert len({p["event_id"] for p in decoded}) == report.valid
    assert len(dead) == report.bad > 0
    seqs = sorted(p["model_seq"] for p in decoded)
    assert seqs == list(range(report.valid))  # every prediction made before its learn step
    for record in predictions:  # keyed like the event, on the event's partition
        assert record.key is not None and record.key.startswith(b"k")


def _bad_events(codec: AvroCodec, good: dict, other_schema: AvroCodec
                ) -> list[tuple[str, bytes | None]]:
    ok = codec.encode(good)
    return [
        ("decode_error", b"\x07\x99not avro at all"),
        ("decode_error", ok[: len(ok) // 2]),
        ("trailing_bytes", ok + b"\x00\x01"),
        ("bad_size", None),
        ("bad_size", b"\x00" * 5000),
        ("non_finite_feature", codec.encode({**good, "salary": math.nan})),
        ("non_finite_feature", codec.encode({**good, "loan": -math.inf})),
        ("feature_out_of_range", codec.encode({**good, "hvalue": 1e300})),
        ("missing_event_id", codec.encode({**good, "event_id": ""})),
        ("event_id_too_long", codec.encode({**good, "event_id": "x" * 257})),
        ("decode_error", other_schema.encode({"event_id": "x", "label": True, "time": 1})),
    ]


async def test_eleven_kinds_of_bad_events_are_dead_lettered_and_the_worker_keeps_going(
    example_settings: Settings, broker: object,
) -> None:
    settings = unique_settings(example_settings, broker.bootstrap_servers,  # type: ignore[attr-defined]
                               max_event_bytes=4096)
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 1200, seed=5))
    bad = _bad_events(codec, stream[0], AvroCodec(load_schema("label")))
    assert len({(reason, value) for reason, value in bad}) == 11
    records = [(b"k1", codec.encode(e)) for e in stream[:100]]
    records += [(b"k1", value) for _, value in bad]
    records += [(b"k1", codec.encode(e)) for e in stream[100:]]
    async with running_worker(settings) as worker:
        await send_raw(settings, records)
        dead = await collect(settings, settings.topics.dead_letters, 1, len(bad), settle_s=0.5)
        predictions = await collect(settings, settings.topics.predictions, 4, len(stream))
        assert worker.stats.dead_letters.total() == len(bad)
    assert [parse_headers(d.headers)["reason"] for d in dead] == [r for r, _ in bad]
    assert [d.value for d in dead] == [v for _, v in bad]  # original bytes, untouched
    for d in dead:
        headers = parse_headers(d.headers)
        assert headers["source_topic"] == settings.topics.events
        assert headers["source_partition"] == "0" and int(headers["source_offset"]) >= 100
    decoder = AvroCodec(load_schema("prediction"))
    decoded = [decoder.decode(r.value) for r in predictions]
    assert len(decoded) == len(stream)
    after = [p for p in decoded if int(p["event_id"].rsplit("-", 1)[1]) >= 100]
    assert len(after) == 1100
    assert all(math.isfinite(v) for p in after for v in p["probabilities"].values())


async def test_nan_then_thousand_good_events_yield_no_non_finite_prediction(
    settings: Settings,
) -> None:
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 1000, seed=9))
    poison = {**stream[0], "event_id": "poison", "salary": math.nan}
    records = [(b"k", codec.encode(poison))] + [(b"k", codec.encode(e)) for e in stream]
    async with running_worker(settings):
        await send_raw(settings, records)
        predictions = await collect(settings, settings.topics.predictions, 4, 1000, settle_s=0.5)
    decoded = [AvroCodec(load_schema("prediction")).decode(r.value) for r in predictions]
    assert len(decoded) == 1000
    non_finite = [p for p in decoded
                  if not all(math.isfinite(v) for v in p["probabilities"].values())]
    assert non_finite == []
    assert all(p["prediction"] is not None for p in decoded[1:])


async def test_restart_resumes_from_committed_offsets(settings: Settings) -> None:
    settings = dataclasses.replace(settings)
    await provision(settings)
    async with running_worker(settings):
        first = await produce(settings, "agrawal", 500, seed=1)
        await collect(settings, settings.topics.predictions, 4, first.valid)
    async with running_worker(settings):
        second = await produce(settings, "agrawal", 500, seed=2)
        total = first.valid + second.valid
        predictions = await collect(settings, settings.topics.predictions, 4, total, settle_s=1.0)
    ids = [AvroCodec(load_schema("prediction")).decode(r.value)["event_id"] for r in predictions]
    assert len(set(ids)) == total  # every event predicted
    assert len(ids) == total       # a clean stop commits: nothing re-processed


async def test_learning_resumes_where_the_history_ends_not_at_the_committed_offset(
        settings: Settings) -> None:
    """A fenced owner that has not noticed yet commits batches its history records no
    longer count; whoever owns the model next must learn those events."""
    await provision(settings)
    async with running_worker(settings) as worker:
        first = await produce(settings, "agrawal", 600, seed=1)
        await until(lambda: worker.models[0].seq == first.valid, 60)
    second = await produce(settings, "agrawal", 600, seed=2)
    events_ = await collect(settings, settings.topics.events, 4, first.valid + second.valid)
    ends = {}
    for record in events_:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    await commit_as_group(settings, {(settings.topics.events, p): o for p, o in ends.items()})
    async with running_worker(settings) as worker:
        await until(lambda: worker.models[0].seq >= first.valid + second.valid, 60)
        assert worker.models[0].seq == first.valid + second.valid  # each learned once


async def test_faust_flow_control_never_drops_fetched_batches(
    example_settings: Settings, broker: object,
) -> None:
    """Faust suspends and then clears its channels' queues whenever its own consumer group
    rebalances; the batch queue must not be one of them (it silently lost batches)."""
    settings = unique_settings(example_settings, broker.bootstrap_servers,  # type: ignore[attr-defined]
                               max_batch_records=200)  # many small batches to queue up
    await provision(settings)
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal", 10_000, seed=12)
        for _ in range(3):
            async with worker.model_lock:  # the inference task waits; fetched batches queue
                await until(worker.batches.full, 30)
                worker.app.flow_control.suspend()  # what Faust does on its rebalance ...
                worker.app.flow_control.resume()   # ... which clears its channels' queues
                assert worker.batches.full()
        await until(lambda: all(lr.durable_seq == report.valid for lr in worker.learners), 60)
    assert worker.stats.events == report.valid  # each event processed once, none dropped
