"""``riverbed demo``: broker, topics, a worker process and a producer, with live progress.

The demo starts the embedded broker, provisions topics, runs ``riverbed worker`` as a
child process, streams a dataset (with a small share of deliberately bad events), and
watches the predictions and dead-letter topics until every event is accounted for:
``predictions == valid events`` and ``dead letters == bad events``. It then stops the
worker (SIGTERM) and the broker by PID and prints a summary. Nothing is left running,
also on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riverbed.streams.broker import EmbeddedBroker, die_with_parent, free_port
from riverbed.streams.config import Settings
from riverbed.streams.datasets import check_dataset
from riverbed.streams.errors import RiverbedError
from riverbed.streams.produce import ProduceReport, produce
from riverbed.streams.tail import decoder_for
from riverbed.streams.topics import ensure_topics, riverbed_topics


@dataclasses.dataclass
class DemoProgress:
    """Live numbers of a demo run (also its final summary)."""

    events: int = 0
    valid_events: int = 0
    bad_events: int = 0
    predictions: int = 0
    correct: int = 0
    scored: int = 0
    dead_letters: int = 0
    learned: int = 0
    model_seq: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_output: float = 0.0
    broker_pid: int | None = None
    worker_pid: int | None = None
    labelled: int = 0
    top: Any = None  # streams.top.TopView fed from riverbed.metrics

    @property
    def accuracy(self) -> float:
        """Share of labelled predictions that were right (progressive validation)."""
        return self.correct / self.scored if self.scored else 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON summary printed at the end."""
        elapsed = max(self.last_output - self.started, 0.0) if self.last_output else 0.0
        return {
            "events": self.events, "valid_events": self.valid_events,
            "bad_events": self.bad_events, "predictions": self.predictions,
            "dead_letters": self.dead_letters, "learned": self.learned,
            "accuracy": round(self.accuracy, 6), "model_seq": self.model_seq,
            "events_per_s": round(self.events / elapsed, 1) if elapsed > 0 else 0.0,
            "seconds": round(elapsed, 3),
            "labelled": self.labelled,
            "broker_pid": self.broker_pid, "worker_pid": self.worker_pid,
        }


class WorkerProcess:
    """``riverbed worker`` as a child process, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, config: Path, bootstrap: str, web_port: int) -> None:
        self.web_port = web_port
        env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": bootstrap}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(config),
             "--web-port", str(web_port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def metrics_text(self) -> str:
        """The worker's Prometheus exposition (``/metrics``)."""
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def stats(self) -> dict[str, Any] | None:
        """The worker's /riverbed/stats, or None while it is not serving."""
        url = f"http://127.0.0.1:{self.web_port}/riverbed/stats"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the worker reports ready (models taken over, partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RiverbedError(f"worker exited with {self.process.returncode}:\n{output}")
            stats = await asyncio.to_thread(self.stats)
            if stats is not None and stats.get("ready"):
                return
            await asyncio.sleep(0.1)
        raise RiverbedError(f"worker not ready after {timeout_s}s")

    def stop(self, grace_s: float = 15.0) -> int:
        """Stop by PID; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode


async def watch_outputs(
    settings: Settings, progress: DemoProgress, labels: dict[str, Any], done: asyncio.Event,
) -> None:
    """Consume predictions and dead letters, scoring predictions against known labels."""
    from aiokafka import TopicPartition

    from riverbed.streams.kafka_clients import PartitionReader
    from riverbed.streams.top import TopView, decode_fetch

    t = settings.topics
    decode = decoder_for(settings, t.predictions)
    progress.top = TopView(settings)
    partitions = ([TopicPartition(t.predictions, p) for p in range(t.partitions)]
                  + [TopicPartition(t.dead_letters, 0), TopicPartition(t.metrics, 0)])
    async with PartitionReader(settings.broker, partitions) as reader:
        while not done.is_set():
            for tp, records in (await reader.fetch(200)).items():
                if tp.topic == t.dead_letters:
                    progress.dead_letters += len(records)
                elif tp.topic == t.metrics:
                    progress.top.add_fetch(decode_fetch(records, caught_up=False))
                else:
                    _score(progress, [decode(r) for r in records], labels)
                progress.last_output = time.monotonic()


def _score(progress: DemoProgress, predictions: list[dict[str, Any]],
           labels: dict[str, Any]) -> None:
    for p in predictions:
        progress.predictions += 1
        progress.model_seq = max(progress.model_seq, p["model_seq"])
        label = labels.get(p["event_id"])
        if label is not None:
            progress.scored += 1
            progress.correct += p["prediction"] == label


async def run_demo(
    settings: Settings, config_path: Path, events: int, dataset: str, rate: float,
    bad_fraction: float, on_tick: Callable[[DemoProgress, str], None], timeout_s: float,
    label_delay_s: float = 0.0, scrape_to: Path | None = None,
) -> DemoProgress:
    """Run the whole demo; returns the final progress. Always cleans up."""
    check_dataset(dataset)  # before anything starts
    progress = DemoProgress()
    with EmbeddedBroker() as broker:
        progress.broker_pid = broker.pid
        on_tick(progress, f"embedded broker on {broker.bootstrap_servers} (pid {broker.pid})")
        settings = settings.with_bootstrap(broker.bootstrap_servers)
        await ensure_topics(settings.broker, riverbed_topics(settings))
        worker = WorkerProcess(config_path, broker.bootstrap_servers, free_port())
        progress.worker_pid = worker.process.pid
        try:
            await worker.wait_ready(60)
            on_tick(progress, f"worker ready (pid {worker.process.pid})")
            await _stream(settings, worker, progress, events, dataset, rate, bad_fraction,
                          on_tick, timeout_s, label_delay_s)
            if scrape_to is not None:  # while the worker still runs
                scrape_to.write_text(await asyncio.to_thread(worker.metrics_text))
        finally:
            code = await asyncio.to_thread(worker.stop)
            if code not in (0, -signal.SIGTERM):
                on_tick(progress, f"worker exited with code {code}")
    return progress


async def _stream(
    settings: Settings, worker: WorkerProcess, progress: DemoProgress, events: int,
    dataset: str, rate: float, bad_fraction: float,
    on_tick: Callable[[DemoProgress, str], None], timeout_s: float, label_delay_s: float,
) -> None:
    labels: dict[str, Any] = {}
    done = asyncio.Event()
    progress.started = time.monotonic()
    watcher = asyncio.create_task(watch_outputs(settings, progress, labels, done))

    def sent(n: int) -> None:
        progress.events += n

    report: ProduceReport = await produce(
        settings, dataset, events, rate, bad_fraction=bad_fraction, on_progress=sent,
        keep_labels=True, labels=labels, label_delay_s=label_delay_s,
    )
    progress.labelled = len(report.labels)
    progress.valid_events, progress.bad_events = report.valid, report.bad
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            stats = await asyncio.to_thread(worker.stats) or {}
            progress.learned = sum(stats.get("learned", {}).values())
            on_tick(progress, "")
            complete = (progress.predictions >= report.valid * len(settings.models)
                        and progress.dead_letters >= report.bad
                        and progress.learned >= progress.labelled * len(settings.models))
            if complete or watcher.done():
                break
            await asyncio.sleep(0.25)  # refresh interval of the live view
        else:
            raise RiverbedError(f"not every event was accounted for within {timeout_s}s")
    finally:
        done.set()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
