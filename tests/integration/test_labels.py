"""Delayed labels against the broker: oracle metrics, restart with pending labels, /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.evaluation import ModelMonitor
from riverbed.streams.history import examples_of, fold
from riverbed.streams.models import OnlineModel
from riverbed.streams.replay import read_model_history
from riverbed.streams.telemetry import TIMING_SAMPLE
from tests.helpers import (
    WorkerChild,
    collect,
    provision,
    running_worker,
    send_raw,
    until,
    worker_env,
)

pytestmark = pytest.mark.integration
KEY = os.urandom(32)


def _settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, history=dataclasses.replace(
        settings.history, snapshot_key=KEY.hex()))


def _delayed_stream(n: int, seed: int) -> tuple[list[Any], list[tuple[str, Any, int]], set[str]]:
    """Unlabelled events and a shuffled label stream: delays, early labels, duplicates,
    never-arriving labels. Returns (events, label sends in order, ids that get a label)."""
    rng = random.Random(seed)
    stream = list(events("agrawal", n, seed=seed, label_fraction=0.0))
    truth = list(events("agrawal", n, seed=seed))
    labelled = [e for e, t in zip(stream, truth) if rng.random() > 0.1]  # 10% never labelled
    sends = []
    for e in labelled:
        label = truth[int(e["event_id"].rsplit("-", 1)[1])]["label"]
        at = int(e["event_id"].rsplit("-", 1)[1]) + rng.randint(-20, 300)  # some before event
        sends.append((at, e["event_id"], label))
        if rng.random() < 0.05:
            sends.append((at + rng.randint(1, 50), e["event_id"], label))  # duplicate
    sends.sort()
    return stream, [(eid, y, at) for at, eid, y in sends], {e["event_id"] for e in labelled}


async def test_delayed_labels_metrics_equal_progressive_validation_oracle(
    settings: Settings,
) -> None:
    settings = _settings(settings)
    await provision(settings)
    event_codec = AvroCodec(load_schema("agrawal_event"))
    label_codec = AvroCodec(load_schema("label"))
    stream, label_sends, labelled_ids = _delayed_stream(3000, seed=8)
    by_position: dict[int, list[tuple[str, Any]]] = {}
    for eid, y, at in label_sends:
        by_position.setdefault(max(at, -1), []).append((eid, y))
    async with running_worker(settings) as worker:
        last, sent = max(by_position), 0
        for start in range(-1, last + 1, 250):  # waves: this wave's labels, then its events
            chunk = stream[max(start, 0): start + 250]
            labels = [(eid, y) for pos in range(start, start + 250) for eid, y in
                      by_position.get(pos, [])]
            await send_raw(settings, partition=None, topic=settings.topics.labels, records=[
                (stream[int(eid.rsplit("-", 1)[1])]["key"].encode(),
                 label_codec.encode({"event_id": eid, "label": y, "time": 0}))
                for eid, y in labels])
            await send_raw(settings, partition=None, topic=settings.topics.events, records=
                           [(e["key"].encode(), event_codec.encode(e)) for e in chunk])
            sent += len(chunk) + len(labels)
            await until(lambda n=sent: worker.stats.events >= n, 30)  # one wave at a time
        learner = worker.learners[0]  # type: ignore[index]
        await until(lambda: learner.durable_seq >= len(labelled_ids), 90)
        await asyncio.sleep(0)
        monitor = worker.processor.monitors[settings.models[0].name]
        live_metrics = monitor.values()
        store = worker.join.store  # type: ignore[union-attr]
        assert len(store.events) == len(stream) - len(labelled_ids)  # never-labelled wait
        assert store.counters.joined > 1000 and store.counters.early_joined > 50  # both paths
        assert store.counters.duplicate_labels > 50
        predictions = await collect(settings, settings.topics.predictions, 4, len(stream))
    # the oracle: the same model, the same learn order (from the history), predictions made
    # at each event's model_seq, scored when its label was learned
    name = settings.models[0].name
    state, effects = fold(name, await read_model_history(settings, name))
    learned = examples_of(effects)
    assert len(learned) == len({x.event_id for x in learned}) == len(labelled_ids)
    assert {x.event_id for x in learned} == labelled_ids  # learn steps == labels joined
    decoder = AvroCodec(load_schema("prediction"))
    made = {p["event_id"]: p for p in (decoder.decode(r.value) for r in predictions)}
    features = {e["event_id"]: e for e in stream}
    oracle, oracle_monitor = OnlineModel(settings.models[0]), ModelMonitor("classification")
    by_seq: dict[int, list[str]] = {}
    for eid, p in made.items():
        by_seq.setdefault(p["model_seq"], []).append(eid)
    oracle_predictions: dict[str, Any] = {}
    from riverbed.streams.features import FeatureExtractor
    extractor = FeatureExtractor(load_schema("agrawal_event"), settings.event,
                                 settings.models[0], settings.limits)

    def predict_at(seq: int) -> None:
        for eid in by_seq.get(seq, []):
            oracle_predictions[eid] = oracle.predict(extractor.extract(features[eid]))
    predict_at(0)
    for step, example in enumerate(learned, start=1):
        prediction, proba = oracle_predictions[example.event_id]
        oracle_monitor.update(example.y, prediction, proba, 0)
        oracle.learn(dict(example.x), example.y)
        predict_at(step)
    for eid, (prediction, proba) in oracle_predictions.items():
        assert made[eid]["probabilities"] == {str(k): v for k, v in proba.items()}
    for metric, value in oracle_monitor.values().items():
        assert math.isclose(live_metrics[metric], value, rel_tol=0, abs_tol=1e-9), metric


async def test_metrics_endpoint_exposes_every_metric(settings: Settings) -> None:
    settings = _settings(settings)
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 600, seed=2, label_fraction=0.5))
    async with running_worker(settings) as worker:
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream] + [(b"k", b"bad")])
        await until(lambda: worker.stats.events >= 601, 30)
        port = worker.app.conf.web_port
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("riverbed_events", "riverbed_predictions", "riverbed_learn_steps",
                 "riverbed_dead_letters", "riverbed_model_seq", "riverbed_drift_events",
                 "riverbed_event_to_prediction_seconds", "riverbed_predict_seconds",
                 "riverbed_learn_seconds", "riverbed_model_metric", "riverbed_pending_labels",
                 "riverbed_expired_labels", "riverbed_labels_joined", "riverbed_consumer_lag",
                 "riverbed_broker_connected", "riverbed_standby", "riverbed_rejected_snapshots",
                 "riverbed_skipped_history_records", "riverbed_skipped_pending_records"):
        assert name in families, name
    value = {(f.name, s.name, tuple(sorted(s.labels.items()))): s.value
             for f in families.values() for s in f.samples}
    model = settings.models[0].name
    assert value[("riverbed_events", "riverbed_events_total", ())] == 601
    assert value[("riverbed_broker_connected", "riverbed_broker_connected", ())] == 1
    assert value[("riverbed_standby", "riverbed_standby", ())] == 0
    assert value[("riverbed_dead_letters", "riverbed_dead_letters_total",
                  (("reason", "decode_error"),))] == 1
    labelled = sum(1 for e in stream if e["label"] is not None)
    assert value[("riverbed_model_seq", "riverbed_model_seq", (("model", model),))] == labelled
    assert value[("riverbed_pending_labels", "riverbed_pending_labels", ())] == 600 - labelled
    accuracy = value[("riverbed_model_metric", "riverbed_model_metric",
                      (("metric", "Accuracy"), ("model", model)))]
    assert 0.4 < accuracy <= 1.0
    assert value[("riverbed_predict_seconds", "riverbed_predict_seconds_count", ())] \
        == 600 // TIMING_SAMPLE  # one predict call in N is timed


@pytest.mark.heavy
async def test_pending_labels_survive_kill_9(settings: Settings) -> None:
    settings = _settings(settings)
    await provision(settings)
    codec, label_codec = AvroCodec(load_schema("agrawal_event")), AvroCodec(load_schema("label"))
    stream = list(events("agrawal", 5000, seed=12, label_fraction=0.0))
    truth = list(events("agrawal", 5000, seed=12))
    env = worker_env(settings, KEY.hex())
    worker = WorkerChild(env)
    try:
        await send_raw(settings, partition=None, topic=settings.topics.events, records=
                       [(e["key"].encode(), codec.encode(e)) for e in stream])
        topic = settings.topics.events
        await worker.wait_for(lambda m: m["pending"] == 5000 and sum(
            v for k, v in m["durable_offsets"].items() if k.startswith(topic + ":")) == 5000, 60)
        worker.kill()  # SIGKILL with 5,000 labels pending
        worker = WorkerChild(env)
        await worker.wait_for(lambda m: m["pending"] == 5000, 60)  # rebuilt from the log
        labels = [(e["key"].encode(), label_codec.encode(
            {"event_id": e["event_id"], "label": t["label"], "time": 0}))
            for e, t in zip(stream, truth)]
        await send_raw(settings, partition=None, topic=settings.topics.labels,
                       records=labels + labels[:300])  # + duplicates
        live = await worker.wait_for(lambda m: m["durable_seq"] >= 5000 and m["pending"] == 0, 90)
        assert live["pending_log"]["read_from"] == 0 and live["pending_log"]["records_read"] > 0
        worker.kill()  # nothing pending now: the next start reads none of the pending log
        worker = WorkerChild(env)
        again = await worker.wait_for(lambda m: m["pending_log"]["read_from"] is not None, 60)
        assert again["pending_log"]["read_from"] > 0, again
        assert again["pending_log"]["records_read"] == 0 and again["pending"] == 0
    finally:
        if worker.process.poll() is None:
            worker.kill()
    state, effects = fold(settings.models[0].name,
                          await read_model_history(settings, settings.models[0].name))
    learned = [x.event_id for x in examples_of(effects)]
    assert len(learned) == len(set(learned)) == 5000 == live["seq"]
    assert set(learned) == {e["event_id"] for e in stream}


async def test_top_shows_the_reports_of_a_running_worker(settings: Settings) -> None:
    import json as _json
    import signal
    import subprocess
    import sys

    from tests.conftest import CONFIG, ROOT
    settings = dataclasses.replace(_settings(settings), labels=dataclasses.replace(
        settings.labels, report_interval_s=0.2))
    await provision(settings)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", 800, seed=4, label_fraction=0.5))
    labelled = sum(1 for e in stream if e["label"] is not None)
    # a record on the metrics topic that is not a report: skipped and counted, never fatal
    await send_raw(settings, topic=settings.topics.metrics, records=[(b"k", b"\x02garbage")])
    async with running_worker(settings) as worker:
        await send_raw(settings, [(b"k", codec.encode(e)) for e in stream])
        await until(lambda: worker.stats.events >= 800, 30)
        reported = worker.reporter.report(worker.models[0])
        await until(lambda: worker.stats.batches > 0 and time.time() * 1000 >
                     reported["time"] + 600, 10)  # at least two report intervals later
    env = worker_env(settings, KEY.hex())
    command = [sys.executable, "-m", "riverbed.cli", "top", "--json", "-c", str(CONFIG)]
    done = await asyncio.to_thread(subprocess.run, [*command, "--once"],
                                   env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "skipped 1 records on" in done.stderr
    (row,) = _json.loads(done.stdout.splitlines()[-1])
    assert row["model"] == settings.models[0].name
    assert row["model_seq"] == labelled and row["pending"] == 800 - labelled
    assert 0.3 < row["accuracy"] <= 1.0

    # without --once: one JSON line at the topic's end, then one whenever reports arrive
    top = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert top.stdout is not None and top.stderr is not None

    async def next_row() -> dict[str, Any]:
        line = await asyncio.wait_for(asyncio.to_thread(top.stdout.readline), 60)  # type: ignore[union-attr]
        (row,) = _json.loads(line)
        return row  # type: ignore[no-any-return]

    more = list(events("agrawal", 300, seed=5, label_fraction=0.5))
    try:
        first = await next_row()
        assert first["model_seq"] == labelled, first  # the view at the end, not midway
        async with running_worker(settings) as worker:
            await send_raw(settings, [(b"k", codec.encode(e)) for e in more])
            want = labelled + sum(1 for e in more if e["label"] is not None)
            deadline = time.monotonic() + 60
            while (row := await next_row())["model_seq"] < want:
                assert time.monotonic() < deadline, row
        assert row["model_seq"] == want
    finally:
        top.send_signal(signal.SIGINT)  # Ctrl-C ends a follow quietly
        try:
            code = await asyncio.to_thread(top.wait, 30)
        except subprocess.TimeoutExpired:
            top.kill()  # never left running by a failed test
            top.wait()
            raise
        errors = top.stderr.read()
    assert code == 0, errors
    assert "skipped 1 records on" in errors and "Traceback" not in errors


async def test_label_for_unknown_event_is_dead_lettered_after_ttl(settings: Settings) -> None:
    settings = dataclasses.replace(_settings(settings), labels=dataclasses.replace(
        settings.labels, ttl_s=0.5))
    await provision(settings)
    label_codec = AvroCodec(load_schema("label"))
    orphan = label_codec.encode({"event_id": "never-sent", "label": 1, "time": 0})
    async with running_worker(settings) as worker:
        await send_raw(settings, partition=None, topic=settings.topics.labels,
                       records=[(b"k", orphan)])
        await until(lambda: worker.join.store.labels, 30)  # type: ignore[union-attr]
        # no further traffic: the worker's expiry timer dead-letters the orphan
        dead = await collect(settings, settings.topics.dead_letters, 1, 1)
        await until(lambda: worker.join.store.counters.expired_labels == 1, 10)  # type: ignore[union-attr]
    from riverbed.streams.deadletter import parse_headers
    assert dead[0].value == orphan
    assert parse_headers(dead[0].headers)["reason"] == "unknown_event_id"


async def test_drift_in_the_stream_emits_drift_events(settings: Settings) -> None:
    # one partition: Kafka orders records per partition only, and "after the change" must
    # mean after it in processing order
    settings = dataclasses.replace(_settings(settings), topics=dataclasses.replace(
        settings.topics, partitions=1))
    await provision(settings)
    from riverbed.streams.history import Annotated
    from riverbed.streams.produce import produce
    from riverbed.streams.top import fetches
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal-drift", 20_000, seed=1)
        learner = worker.learners[0]  # type: ignore[index]
        await until(lambda: learner.durable_seq >= report.valid, 90)
        drift_count = worker.stats.drifts[settings.models[0].name]
    assert drift_count >= 1
    kinds = [r["kind"] async for fetched in fetches(settings, follow=False)
             for r in fetched.reports]
    assert "drift" in kinds
    history = await read_model_history(settings, settings.models[0].name)
    notes = [e.body for e in history if isinstance(e.body, Annotated)]
    assert notes and all(n.kind == "drift" for n in notes)
    assert 10_000 <= notes[0].seq <= 11_000, [n.seq for n in notes]  # soon after the change
