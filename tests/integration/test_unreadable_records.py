"""Records the Kafka client cannot parse (a header name that is not UTF-8, which both brokers
store) are stepped over: a dead letter on the events topic, skipped on the history, and no
readable record lost -- never a reader stuck at the offset or a worker down."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.topics import TopicSpec, ensure_topics
from riverbed.streams.unreadable import fetch_readable
from tests.helpers import collect, provision, running_worker, send_raw, until

pytestmark = pytest.mark.integration


class _RawName(str):
    """A header name whose bytes are not UTF-8 (what another client may write)."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-not-utf-8"


async def send_unparseable(settings: Settings, topic: str, partition: int = 0,
                           key: bytes | None = None, value: bytes | None = b"x") -> None:
    """One record built byte by byte (aiokafka's pure-Python batch writer), as another
    client could write it: a header name that is not UTF-8."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker.bootstrap_servers)
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, 1 << 16)
        batch.append(key=key, value=value, timestamp=None,
                     headers=[(_RawName("name"), b"value")])
        batch.close()
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


async def test_fetch_readable_steps_over_the_record_and_loses_no_other(
        settings: Settings) -> None:
    """Plain ``getmany`` raises at the record on every call and never returns the records
    around it; :func:`fetch_readable` returns each readable record once, in order, and the
    unreadable one at its offset."""
    topic = f"{settings.topics.events}.unparseable"
    await ensure_topics(settings.broker, [TopicSpec(topic, 2)])
    await send_raw(settings, [(None, b"p0-0")], partition=0, topic=topic)
    await send_unparseable(settings, topic, partition=0)
    await send_raw(settings, [(None, b"p0-2")], partition=0, topic=topic)
    await send_raw(settings, [(None, b"p1-0"), (None, b"p1-1")], partition=1, topic=topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker.bootstrap_servers,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        with pytest.raises(UnicodeDecodeError):  # what every reader met before
            for _ in range(5):
                await consumer.getmany(timeout_ms=1000)
        for tp in tps:
            consumer.seek(tp, 0)
        values: dict[int, list[bytes]] = {0: [], 1: []}
        skipped: list[tuple[int, int]] = []

        deadline = time.monotonic() + 30
        while len(values[0]) + len(values[1]) < 4 or not skipped:  # each call: what came
            assert time.monotonic() < deadline, f"read only {values}, skipped {skipped}"
            fetched, unreadable = await fetch_readable(consumer, 500)
            for tp, records in fetched.items():
                values[tp.partition] += [r.value for r in records]
            skipped.extend((u.partition, u.offset) for u in unreadable)
        assert values == {0: [b"p0-0", b"p0-2"], 1: [b"p1-0", b"p1-1"]}
        assert skipped == [(0, 1)]
    finally:
        await consumer.stop()


async def test_an_unparseable_event_is_dead_lettered_and_the_worker_goes_on(
        settings: Settings) -> None:
    """On the events topic: a dead letter (reason ``unreadable_record``, where it was; no
    key, no value) and every other event predicted once -- also one with neither key nor
    value (a keyless tombstone), whose dead letter a Kafka client could not send before;
    and the same on the labels topic."""
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 200, seed=9))
    async with running_worker(settings) as worker:
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream[:100]])
        await send_unparseable(settings, settings.topics.events)
        await send_unparseable(settings, settings.topics.events, value=None)
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream[100:]])
        predictions = await collect(settings, settings.topics.predictions, 4, len(stream),
                                    settle_s=0.5)
        await send_unparseable(settings, settings.topics.labels)  # the labels topic too
        dead = await collect(settings, settings.topics.dead_letters, 1, 3, settle_s=0.5)
        assert worker.stats.dead_letters["unreadable_record"] == 3
        assert worker.stats.model_seq[settings.models[0].name] == len(stream)
    assert len(predictions) == len(stream)
    headers = [parse_headers(d.headers) for d in dead]
    assert [h["reason"] for h in headers] == ["unreadable_record"] * 3
    assert [(h["source_topic"], int(h["source_offset"])) for h in headers] == [
        (settings.topics.events, 100), (settings.topics.events, 101),
        (settings.topics.labels, 0)]
    assert all("not UTF-8" in h["detail"] for h in headers)
    assert [(d.key, d.value) for d in dead] == [(None, b"")] * 3


async def test_an_unparseable_history_record_does_not_stop_a_restore(
        settings: Settings) -> None:
    """On the history topic: a restarted worker reads past it and goes on learning where
    the history ends (before: every worker stuck at that offset while starting)."""
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 300, seed=10))
    name = settings.models[0].name
    async with running_worker(settings) as worker:
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream[:200]])
        await until(lambda: worker.stats.model_seq.get(name) == 200, 60)
    await send_unparseable(settings, settings.topics.history)
    async with running_worker(settings) as worker:  # restored: the same model, seq 200
        await until(lambda: worker.stats.model_seq.get(name) == 200, 60)
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream[200:]])
        await until(lambda: worker.stats.model_seq.get(name) == 300, 60)
