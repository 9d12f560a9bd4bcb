"""Exactly-once outputs on Kafka transactions (issue riverbed 10).

On Apache Kafka, a worker SIGKILLed three times at random moments over 30,000 labelled
events: with ``exactly_once`` a ``read_committed`` consumer sees every ``(event_id, model)``
exactly once; with ``at_least_once`` (same crash test) predictions repeat. Both learn each
labelled event once and pass ``replay --verify``. The same with delayed labels. A zombie
(a worker frozen past the lease timeout while another takes over, then resumed) commits
nothing. On the embedded broker, which has no working transactions, a worker asked for
exactly-once stops at start with one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from riverbed.streams.broker import EmbeddedBroker
from riverbed.streams.config import Settings
from riverbed.streams.kafka_broker import KafkaBroker
from riverbed.streams.produce import produce
from tests.conftest import CONFIG, ROOT, unique_settings
from tests.helpers import PredictionCounter, WorkerChild, provision, worker_env
from tests.integration.test_kafka_broker import require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_broker, pytest.mark.heavy]

EVENTS = 30_000


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    require_kafka()
    with KafkaBroker() as broker:
        yield broker


def _env(settings: Settings, key_hex: str, guarantee: str) -> dict[str, str]:
    return {**worker_env(settings, key_hex), "RIVERBED_WORKER__PROCESSING_GUARANTEE": guarantee}


async def _crash_three_times(kafka: KafkaBroker, example_settings: Settings, guarantee: str,
                             label_delay_s: float = 0.0) -> tuple[int, int]:
    """Returns (events, duplicate predictions seen by a read_committed consumer)."""
    settings = unique_settings(example_settings, kafka.bootstrap_servers)
    await provision(settings)
    key_hex = os.urandom(32).hex()
    env = _env(settings, key_hex, guarantee)
    rng = random.Random(hash((guarantee, label_delay_s)) & 0xFFFF)
    outputs = PredictionCounter(settings)
    await outputs.__aenter__()
    worker = WorkerChild(env)
    sender = asyncio.create_task(produce(settings, "agrawal", EVENTS, rate=3_000.0, seed=31,
                                        label_delay_s=label_delay_s))
    try:
        for kill in range(3):
            target = rng.randrange(3_000, 7_000) * (kill + 1)
            await worker.wait_for(lambda m, t=target: m["seq"] >= t, 180)
            worker.kill()  # SIGKILL, mid-transaction or between two
            worker = WorkerChild(env)
        report = await sender
        valid = report.valid
        deadline = time.monotonic() + 240
        while await outputs.read() < valid:
            assert worker.process.poll() is None, "the worker died"
            assert time.monotonic() < deadline, f"{len(outputs.seen)}/{valid} predicted"
        live = await worker.wait_for(lambda m: m["durable_seq"] >= len(report.labels), 240)
    finally:
        if worker.process.poll() is None:
            worker.kill()
        sender.cancel()
        await outputs.__aexit__()
    assert len(outputs.seen) == valid                    # every event predicted
    assert live["seq"] == live["durable_seq"] == len(report.labels)  # each learned once
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "riverbed.cli", "replay", "agrawal-lr", "--verify",
        "-c", str(CONFIG)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    duplicates = outputs.duplicates
    print(f"{guarantee}{' (delayed labels)' if label_delay_s else ''}: {valid} events, "
          f"3 SIGKILLs, {duplicates} duplicate predictions (read_committed)")
    return valid, duplicates


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_three_sigkills(kafka: KafkaBroker, example_settings: Settings,
                              guarantee: str) -> None:
    _, duplicates = await _crash_three_times(kafka, example_settings, guarantee)
    if guarantee == "exactly_once":
        assert duplicates == 0


async def test_three_sigkills_with_delayed_labels(kafka: KafkaBroker,
                                                  example_settings: Settings) -> None:
    _, duplicates = await _crash_three_times(kafka, example_settings, "exactly_once",
                                             label_delay_s=2.0)
    assert duplicates == 0


async def test_a_zombie_commits_nothing_after_its_replacement_started(
        kafka: KafkaBroker, example_settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIVERBED_TEST_WORKER_LOGS", str(tmp_path))
    settings = unique_settings(example_settings, kafka.bootstrap_servers)
    await provision(settings)
    key_hex = os.urandom(32).hex()
    env = _env(settings, key_hex, "exactly_once")
    outputs = PredictionCounter(settings)
    await outputs.__aenter__()
    zombie = WorkerChild(env)
    replacement = None
    sender = asyncio.create_task(produce(settings, "agrawal", EVENTS // 3, rate=2_000.0,
                                        seed=41))
    try:
        await zombie.wait_for(lambda m: m["seq"] >= 2_000, 120)
        zombie.process.send_signal(signal.SIGSTOP)  # frozen past the lease and session
        replacement = WorkerChild(env)
        await replacement.wait_for(lambda m: m["epoch"] == 2 and m["seq"] > 2_000, 120)
        zombie.process.send_signal(signal.SIGCONT)  # it wakes up holding open work
        code = await asyncio.wait_for(asyncio.to_thread(zombie.process.wait), 120)
        report = await sender
        deadline = time.monotonic() + 180
        while await outputs.read() < report.valid:
            assert replacement.process.poll() is None, "the replacement died"
            assert time.monotonic() < deadline, f"{len(outputs.seen)}/{report.valid}"
        live = await replacement.wait_for(lambda m: m["durable_seq"] >= report.valid, 120)
    finally:
        for child in (zombie, replacement):
            if child is not None and child.process.poll() is None:
                child.kill()
        sender.cancel()
        await outputs.__aexit__()
    assert code == 75  # the zombie stopped (lease lost: EX_TEMPFAIL) instead of going on
    assert zombie.log_path is not None
    assert "Traceback" not in Path(zombie.log_path).read_text()
    assert outputs.duplicates == 0  # nothing it did was committed
    assert len(outputs.seen) == report.valid and live["seq"] == report.valid


async def test_exactly_once_on_the_embedded_broker_stops_with_one_line(
        example_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIVERBED_TEST_WORKER_LOGS", str(tmp_path))
    with EmbeddedBroker() as broker:
        settings = unique_settings(example_settings, broker.bootstrap_servers)
        await provision(settings)
        child = WorkerChild(_env(settings, os.urandom(32).hex(), "exactly_once"))
        try:
            code = await asyncio.wait_for(asyncio.to_thread(child.process.wait), 120)
        finally:
            if child.process.poll() is None:
                child.kill()
    assert code == 1
    assert child.log_path is not None
    log = Path(child.log_path).read_text()
    assert "Traceback" not in log
    assert len(re.findall(r"needs a broker with working transactions", log)) == 1, log
    assert dataclasses.is_dataclass(settings)
