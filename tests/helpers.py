"""Helpers for integration tests: run a worker in-process, collect a topic's records."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from riverbed.agents.worker import Worker
from riverbed.streams.broker import die_with_parent, free_port
from riverbed.streams.config import Settings
from riverbed.streams.output import BatchProducer
from riverbed.streams.tail import collect  # noqa: F401 - the tests import it from here
from riverbed.streams.topics import ensure_topics, riverbed_topics
from tests.conftest import CONFIG, ROOT


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A started worker, stopped on exit."""
    worker = Worker(settings, web_port=free_port())
    await worker.start()
    try:
        yield worker
    finally:
        await stop_or_explain(worker)


async def stop_or_explain(worker: Worker, timeout_s: float = 60.0) -> None:
    """``worker.stop()``; a stop still running after ``timeout_s`` fails the test, every
    task's await chain in its captured log (a stop after a crash once hung in CI until
    the 6-minute test timeout, with nothing to say what it waited for)."""
    assert await worker.stop_within(timeout_s), (
        f"worker.stop() did not finish within {timeout_s:.0f}s (await chains: log above)")


async def provision(settings: Settings) -> None:
    await ensure_topics(settings.broker, riverbed_topics(settings))


async def send_raw(settings: Settings, records: Sequence[tuple[bytes | None, bytes | None]],
                   partition: int | None = 0, topic: str | None = None) -> None:
    """Send ``(key, value)`` records in order to ``topic`` (default: the events topic), to one
    partition, or by key with Kafka's default partitioner if ``partition`` is None."""
    producer = BatchProducer(settings.broker)
    await producer.start()
    try:
        futures = [await producer.producer.send(  # type: ignore[union-attr]
            topic or settings.topics.events, value=v, key=k, partition=partition)
            for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def commit_as_group(settings: Settings, positions: dict[tuple[str, int], int]) -> None:
    """Commit ``positions`` ((topic, partition) -> offset) in the worker's consumer group
    as a member of it, the way an owner does (the group must have no other member)."""
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker.bootstrap_servers,
                                group_id=settings.worker.group_id, enable_auto_commit=False,
                                partition_assignment_strategy=(RangePartitionAssignor,))
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): o for (t, p), o in positions.items()}
        consumer.subscribe(sorted({t for t, _ in positions}))
        deadline = time.monotonic() + 30
        while not set(tps) <= consumer.assignment():  # joined, owns them
            assert time.monotonic() < deadline, f"not assigned {set(tps)} in time"
            await consumer.getmany(timeout_ms=200)
        await consumer.commit(tps)
        for tp, offset in tps.items():
            assert await consumer.committed(tp) == offset
    finally:
        await consumer.stop()


async def until(predicate: Any, timeout_s: float) -> None:
    """Wait until ``predicate()`` holds; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.05)


def worker_env(settings: Settings, key_hex: str) -> dict[str, str]:
    """Environment that points a riverbed child process at ``settings``' broker and topics."""
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": settings.broker.bootstrap_servers,
           "RIVERBED_WORKER__GROUP_ID": settings.worker.group_id,
           "RIVERBED_WORKER__FETCH_MAX_WAIT_MS": "20",
           "RIVERBED_HISTORY__SNAPSHOT_EVERY_STEPS": "7000",
           "RIVERBED_HISTORY__SNAPSHOT_KEY": key_hex}
    for field in dataclasses.fields(settings.topics):
        value = getattr(settings.topics, field.name)
        if isinstance(value, str):
            env[f"RIVERBED_TOPICS__{field.name.upper()}"] = value
    return env


class WorkerChild:
    """``riverbed worker`` in a child process, observed through its web pages."""

    def __init__(self, env: dict[str, str], config: Path = CONFIG) -> None:
        self.port = free_port()
        # RIVERBED_TEST_WORKER_LOGS=DIR keeps each child's log in DIR/worker-PORT.log
        log_dir = os.environ.get("RIVERBED_TEST_WORKER_LOGS")
        output: Any = subprocess.DEVNULL
        level = os.environ.get("RIVERBED_TEST_WORKER_LOG_LEVEL", "warning")
        self.log_path = os.path.join(log_dir, f"worker-{self.port}.log") if log_dir else None
        if self.log_path:
            output = open(self.log_path, "wb")  # noqa: SIM115
        # its own TMPDIR: a SIGKILLed worker cannot remove its temporary files, kill() does
        self.tmp = tempfile.mkdtemp(prefix="riverbed-test-worker-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(config),
             "--web-port", str(self.port), "--log-level", level],
            env={**env, "TMPDIR": self.tmp}, cwd=ROOT,
            preexec_fn=die_with_parent, stdout=output, stderr=output)
        if self.log_path:
            output.close()  # the child holds its own descriptor

    def get(self, page: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{page}", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    async def wait_for(self, predicate: Any, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker died: {self.process.returncode}"
            state = await asyncio.to_thread(self.get, "/riverbed/models")
            if state is not None and predicate(state["agrawal-lr"]):
                return state["agrawal-lr"]
            await asyncio.sleep(0.05)
        raise AssertionError(f"condition not reached before the deadline; last state {state}")

    def dump_tasks(self) -> None:
        """Ask the child to log its asyncio tasks (kept with RIVERBED_TEST_WORKER_LOGS)."""
        if self.process.poll() is not None or self.log_path is None:
            return
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the dump is written
            with open(self.log_path, "rb") as written:
                if b"asyncio tasks:" in written.read():
                    return
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class PredictionCounter:
    """Reads a predictions topic as a downstream consumer does (``read_committed``, one
    long-lived reader) and counts every ``(event_id, model)``. Use ``async with``."""

    def __init__(self, settings: Settings) -> None:
        from collections import Counter

        from riverbed.schemas import load_schema
        from riverbed.streams.codec import AvroCodec
        from riverbed.streams.kafka_clients import PartitionReader

        t = settings.topics
        self.reader = PartitionReader(settings.broker, [TopicPartition(t.predictions, p)
                                                        for p in range(t.partitions)],
                                      fetch_max_wait_ms=100)
        self.decode = AvroCodec(load_schema("prediction")).decode
        self.seen: Counter[tuple[str, str]] = Counter()
        #: (model_seq, lineage) the predictions carried, with how many carried each
        self.versions: Counter[tuple[int, int]] = Counter()
        self.records = 0

    async def __aenter__(self) -> PredictionCounter:
        await self.reader.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reader.__aexit__(None, None, None)

    async def read(self) -> int:
        """Read what arrived; how many distinct ``(event_id, model)`` so far."""
        for records in (await self.reader.fetch(200)).values():
            self.records += len(records)
            for record in records:
                p = self.decode(record.value)
                self.seen[(p["event_id"], p["model"])] += 1
                self.versions[(p["model_seq"], p["lineage"])] += 1
        return len(self.seen)

    async def at_least(self, count: int) -> bool:
        return await self.read() >= count

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values())
