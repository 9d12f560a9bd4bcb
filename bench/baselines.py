"""The baselines riverbed is measured against, each doing the same work per event:
decode the Avro event, extract features with riverbed's FeatureExtractor, predict, learn,
encode an Avro Prediction -- without riverbed's guarantees (history, dedup, dead letters,
metrics). Each prints one JSON line (``bench/measure.py``) when it is done.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from bench.measure import cpu_marks, report
from riverbed.streams.config import Settings


def run_naive_faust(settings: Settings, events: int) -> None:
    """Contender: the textbook Faust agent (async for + await send per event)."""
    import faust

    from riverbed.streams.app import faust_broker_url, faust_credentials

    decoder, encoder, features, model = kit(settings)
    app = faust.App(f"{settings.worker.group_id}-naive", broker=faust_broker_url(
        settings.broker.bootstrap_servers), broker_credentials=faust_credentials(
        settings.broker), web_enabled=False, autodiscover=False,
        store="memory://", broker_session_timeout=3.0, broker_heartbeat_interval=0.3,
        topic_partitions=settings.topics.partitions)
    source = app.topic(settings.topics.events, value_serializer="raw", key_serializer="raw")
    sink = app.topic(settings.topics.predictions, value_serializer="raw", key_serializer="raw")
    state: dict[str, Any] = {"n": 0, "first": None}

    @app.agent(source)
    async def naive(stream: Any) -> None:
        async for key, value in stream.items():
            if state["first"] is None:
                state["first"], state["cpu"] = time.perf_counter(), cpu_marks()
            out = predict_learn(decoder, encoder, features, model, value)
            await sink.send(key=key, value=out)
            state["n"] += 1
            if state["n"] == events:
                report(state["first"], time.perf_counter(), events, {}, state["cpu"])
                os._exit(0)  # measurement done; skip Faust's slow shutdown

    import logging
    logging.basicConfig(level=logging.WARNING)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


def kit(settings: Settings) -> tuple[Any, Any, Any, Any]:
    """The decoder, encoder, feature extractor and model every baseline uses: riverbed's
    features and model; fastavro (or riverbed's codec, ``--baseline-codec``) for Avro."""
    from bench.baseline_codec import baseline_codec
    from riverbed.schemas import load_schema
    from riverbed.streams.features import FeatureExtractor
    from riverbed.streams.models import OnlineModel

    schema = load_schema(settings.event.schema)
    return (baseline_codec(schema), baseline_codec(load_schema("prediction")),
            FeatureExtractor(schema, settings.event, settings.models[0], settings.limits),
            OnlineModel(settings.models[0]))


def predict_learn(decoder: Any, encoder: Any, features: Any, model: Any, value: bytes) -> bytes:
    """One event's work in every baseline: decode, extract, predict, learn, encode."""
    event = decoder.decode(value)
    x = features.extract(event)
    seq = model.seq
    prediction, proba = model.predict(x)
    if event["label"] is not None:
        model.learn(x, event["label"])
    return encoder.encode({"event_id": event["event_id"], "key": event["key"], "model": model.name,
                           "model_seq": seq, "lineage": 0, "prediction": prediction,
                           "probabilities": {str(k): v for k, v in proba.items()},
                           "event_time": event["timestamp"],
                           "prediction_time": int(time.time() * 1000)})


async def run_aiokafka_loop(settings: Settings, events: int, fetch_wait_ms: int = 100) -> None:
    """Contender: the hand-written bound -- getmany batches, same work, batched sends,
    commit after acks. No history, dedup, dead letters or metrics."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from riverbed.streams.kafka_clients import client_options

    decoder, encoder, features, model = kit(settings)
    consumer = AIOKafkaConsumer(settings.topics.events, **client_options(settings.broker),
                                group_id=settings.worker.group_id, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=fetch_wait_ms,
                                max_partition_fetch_bytes=4 * 1024 * 1024,
                                session_timeout_ms=3000, heartbeat_interval_ms=300)
    producer = AIOKafkaProducer(**client_options(settings.broker), acks="all",
                                linger_ms=2, max_batch_size=1024 * 1024)
    await consumer.start()
    await producer.start()
    n, first, cpu_first = 0, None, None
    try:
        while n < events:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=2000)
            futures = []
            for tp, records in fetched.items():
                if first is None:
                    first, cpu_first = time.perf_counter(), cpu_marks()
                batch = producer.create_batch()
                for record in records:
                    out = predict_learn(decoder, encoder, features, model, record.value)
                    if batch.append(key=record.key, value=out, timestamp=None) is None:
                        batch.close()
                        futures.append(await producer.send_batch(
                            batch, settings.topics.predictions, partition=tp.partition))
                        batch = producer.create_batch()
                        batch.append(key=record.key, value=out, timestamp=None)
                batch.close()
                futures.append(await producer.send_batch(batch, settings.topics.predictions,
                                                         partition=tp.partition))
                n += len(records)
            await asyncio.gather(*futures)
            if fetched:
                await consumer.commit()
        report(first or time.perf_counter(), time.perf_counter(), n, {}, cpu_first)
    finally:
        await producer.stop()
        await consumer.stop()


def run_quixstreams(settings: Settings, events: int) -> None:
    """Contender: quixstreams ``.apply`` with the same work per event."""
    from quixstreams import Application
    from quixstreams.kafka.configuration import ConnectionConfig

    from riverbed.streams.security import librdkafka_security

    decoder, encoder, features, model = kit(settings)
    # the same connection as riverbed's clients (TLS, SASL), in librdkafka's terms; the
    # admin client quixstreams makes gets it too
    address = ConnectionConfig.from_librdkafka_dict({
        "bootstrap.servers": settings.broker.bootstrap_servers,
        **librdkafka_security(settings.broker)})
    app = Application(broker_address=address,
                      consumer_group=settings.worker.group_id, auto_offset_reset="earliest",
                      auto_create_topics=False, use_changelog_topics=False)
    source = app.topic(settings.topics.events, value_deserializer="bytes",
                       key_deserializer="bytes")
    sink = app.topic(settings.topics.predictions, value_serializer="bytes",
                     key_serializer="bytes")
    state: dict[str, Any] = {"n": 0, "first": None}

    def work(value: bytes) -> bytes:
        if state["first"] is None:
            state["first"], state["cpu"] = time.perf_counter(), cpu_marks()
        out = predict_learn(decoder, encoder, features, model, value)
        state["n"] += 1
        if state["n"] == events:
            report(state["first"], time.perf_counter(), events, {}, state["cpu"])
            os._exit(0)  # measurement done
        return out

    app.dataframe(source).apply(work).to_topic(sink)
    app.run()


def run_river_alone(settings: Settings, events: int) -> None:
    """Contender: River predict+learn on in-memory feature dicts (no Kafka, no Avro)."""
    from riverbed.streams.checks import FEATURES
    from riverbed.streams.datasets import events as dataset
    from riverbed.streams.models import OnlineModel

    model = OnlineModel(settings.models[0])
    data = [({f: float(e[f]) for f in FEATURES}, e["label"]) for e in dataset("agrawal", events)]
    began = time.perf_counter()
    for x, y in data:
        model.predict(x)
        model.learn(x, y)
    report(began, time.perf_counter(), events, {})
