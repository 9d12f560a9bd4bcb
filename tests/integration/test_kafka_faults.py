"""Broker faults on Apache Kafka (issue riverbed 8), each during a 30,000-event stream with
labels, under a worker process: the broker SIGTERMed or SIGKILLed and restarted on the same
log dir after 10 s, and a broker frozen past the session timeout (SIGSTOP 10 s, SIGCONT).

Each ends with: every event predicted, learned steps == distinct labelled ids, ``replay
--verify`` exit 0, the same worker process alive (no crash, no restart), and a bounded
log while degraded (at most one line per 5 s, plus a few for the transitions). Each prints
the time from the broker's return to the first new prediction.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from riverbed.streams.config import Settings
from riverbed.streams.kafka_broker import KafkaBroker
from riverbed.streams.produce import produce
from tests.conftest import CONFIG, ROOT, unique_settings
from tests.helpers import PredictionCounter, WorkerChild, provision, worker_env
from tests.integration.test_kafka_broker import require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_broker, pytest.mark.heavy]

EVENTS = 30_000
FAULT_S = 10.0  # how long the broker stays away (the fault itself, not a synchronisation)


@pytest.fixture
def kafka_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RIVERBED_TEST_WORKER_LOGS", str(tmp_path))
    require_kafka()
    yield tmp_path / "kafka-data"


async def _until(check: object, timeout_s: float, what: str, child: WorkerChild) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        assert child.process.poll() is None, f"the worker died ({child.process.returncode})"
        assert time.monotonic() < deadline, f"{what}: not before the deadline"


async def _run_fault(kafka_dir: Path, example_settings: Settings, tmp_path: Path,
                     fault: str) -> None:
    broker = KafkaBroker(data_dir=kafka_dir).start()
    port, controller = broker.port, broker.controller_port
    try:
        settings = unique_settings(example_settings, broker.bootstrap_servers)
        await provision(settings)
        key_hex = os.urandom(32).hex()
        child = WorkerChild(worker_env(settings, key_hex))
        predictions = PredictionCounter(settings)
        await predictions.__aenter__()
        try:
            first = await produce(settings, "agrawal", EVENTS * 2 // 3, seed=1)
            await _until(lambda: predictions.at_least(EVENTS // 3), 120, "first third", child)
            assert child.log_path is not None
            lines_before = len(Path(child.log_path).read_text().splitlines())
            # the fault, mid-stream: predictions are flowing now
            down = time.monotonic()
            if fault == "stop":
                broker.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                await asyncio.sleep(FAULT_S)
                broker.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            else:
                sig = signal.SIGTERM if fault == "term" else signal.SIGKILL
                broker.process.send_signal(sig)  # type: ignore[union-attr]
                broker.process.wait(60)  # type: ignore[union-attr]
                broker.stop()  # the process is gone: clean up (the log dir is kept)
                await asyncio.sleep(FAULT_S)
                broker = KafkaBroker(port=port, controller_port=controller,
                                     data_dir=kafka_dir).start()
            returned = time.monotonic()
            seen = await predictions.read()
            await _until(lambda: predictions.at_least(seen + 1), 120, "a new prediction", child)
            recovery_s = time.monotonic() - returned
            degraded_s = time.monotonic() - down  # the fault, the broker's start, recovery
            degraded = Path(child.log_path).read_text().splitlines()[lines_before:]
            second = await produce(settings, "agrawal", EVENTS - EVENTS * 2 // 3, seed=2)
            valid = first.valid + second.valid
            await _until(lambda: predictions.at_least(valid), 240, "every prediction", child)
            live = await child.wait_for(lambda m: m["durable_seq"] >= valid, 120)
            assert child.process.poll() is None  # the same process throughout
            print(f"{fault}: {valid} events, {len(predictions.seen)} predicted "
                  f"({predictions.records} prediction records), {live['seq']} learned, "
                  f"first new prediction {recovery_s:.1f}s after the broker returned, "
                  f"{len(degraded)} log lines while degraded")
        finally:
            child.kill()
            await predictions.__aexit__()
        labelled = set(first.labels) | set(second.labels)
        assert len(predictions.seen) == valid                     # every event predicted
        assert live["seq"] == live["durable_seq"] == len(labelled)  # each learned once
        # the metrics report waits for the broker instead of overrunning its timer
        assert not [line for line in degraded if "overlapping" in line], degraded
        # one line per 5 s while degraded, plus a few for going away and coming back
        assert len(degraded) <= degraded_s / 5 + 4, "\n".join(degraded[-30:])
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "riverbed.cli", "replay", "agrawal-lr", "--verify",
            "-c", str(CONFIG)], env=worker_env(settings, key_hex), cwd=ROOT,
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    finally:
        broker.stop()


@pytest.mark.parametrize("fault", ["term", "kill"])
async def test_the_broker_restarts_on_its_log_dir_mid_stream(
        kafka_dir: Path, example_settings: Settings, tmp_path: Path, fault: str) -> None:
    await _run_fault(kafka_dir, example_settings, tmp_path, fault)


async def test_a_broker_frozen_past_the_session_timeout(
        kafka_dir: Path, example_settings: Settings, tmp_path: Path) -> None:
    await _run_fault(kafka_dir, example_settings, tmp_path, "stop")


async def test_partition_leaders_sigkilled_in_a_three_node_cluster(
        kafka_dir: Path, example_settings: Settings) -> None:
    """3 nodes, replication 3, min.insync.replicas 2, acks=all: SIGKILL the leader of the
    history partition mid-stream (restarted once the stream goes on), then the leader of an
    input partition; nothing is lost, nothing learned twice, the worker never stops."""
    import dataclasses

    from riverbed.streams.kafka_cluster import KafkaCluster
    from tests.integration.test_kafka_cluster import _leader_and_isr

    with KafkaCluster(brokers=3) as cluster:
        base = unique_settings(example_settings, cluster.bootstrap_servers)
        settings = dataclasses.replace(base, topics=dataclasses.replace(
            base.topics, replication_factor=3, min_insync_replicas=2))
        await provision(settings)
        key_hex = os.urandom(32).hex()
        env = {**worker_env(settings, key_hex), "RIVERBED_TOPICS__REPLICATION_FACTOR": "3",
               "RIVERBED_TOPICS__MIN_INSYNC_REPLICAS": "2"}
        child = WorkerChild(env)
        predictions = PredictionCounter(settings)
        await predictions.__aenter__()
        try:
            first = await produce(settings, "agrawal", EVENTS * 2 // 3, seed=5)
            await _until(lambda: predictions.at_least(EVENTS // 4), 180, "a quarter", child)
            history_leader, _ = await _leader_and_isr(cluster.bootstrap_servers,
                                                      settings.topics.history)
            killed = cluster.node_of(history_leader)
            cluster.stop_node(killed, signal.SIGKILL)
            seen = await predictions.read()
            await _until(lambda: predictions.at_least(seen + 3_000), 180, "on, without it",
                         child)
            cluster.start_node(killed)
            input_leader, _ = await _leader_and_isr(cluster.bootstrap_servers,
                                                    settings.topics.events)
            cluster.stop_node(cluster.node_of(input_leader), signal.SIGKILL)
            second = await produce(settings, "agrawal", EVENTS - EVENTS * 2 // 3, seed=6)
            valid = first.valid + second.valid
            await _until(lambda: predictions.at_least(valid), 300, "every prediction", child)
            live = await child.wait_for(lambda m: m["durable_seq"] >= valid, 180)
            assert child.process.poll() is None  # the same process throughout
        finally:
            child.kill()
            await predictions.__aexit__()
        assert len(predictions.seen) == valid
        assert live["seq"] == live["durable_seq"] == len(set(first.labels) | set(second.labels))
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "riverbed.cli", "replay", "agrawal-lr", "--verify",
            "-c", str(CONFIG)], env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=600)
        assert done.returncode == 0, done.stderr
        print(f"3-node cluster: {valid} events, {len(predictions.seen)} predicted "
              f"({predictions.records} records), {live['seq']} learned, history leader "
              f"{history_leader} and input leader {input_leader} SIGKILLed")
