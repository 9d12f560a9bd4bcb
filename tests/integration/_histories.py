"""Build model histories on the embedded broker for the history-command tests: several
checkpoint snapshots, a rollback, and the wall-clock time after each phase."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from riverbed.streams.config import Settings
from riverbed.streams.history import HistoryEvent
from riverbed.streams.history_codec import encode_event, record_headers
from riverbed.streams.output import BatchProducer
from riverbed.streams.produce import produce
from riverbed.streams.replay import read_model_history
from tests.conftest import CONFIG, ROOT
from tests.helpers import provision, running_worker, until, worker_env


@dataclasses.dataclass
class Built:
    """A history and what was true after each phase: name -> (time ms, seq, lineage)."""

    settings: Settings
    key: bytes
    marks: dict[str, tuple[int, int, int]]
    #: the predictions topic's records decoded (for comparisons with ``score``)
    name: str = "agrawal-lr"


def history_settings(settings: Settings, key: bytes, every: int = 300) -> Settings:
    """``settings`` with small batches and a snapshot every ``every`` learn steps."""
    return dataclasses.replace(
        settings,
        history=dataclasses.replace(settings.history, snapshot_every_steps=every,
                                    snapshot_key=key.hex()),
        limits=dataclasses.replace(settings.limits, max_batch_records=100))


def _now_ms() -> int:
    return int(time.time() * 1000)


async def build_history(settings: Settings, key: bytes, phases: Sequence[int] = (900, 600),
                        rollback_to: int | None = 500, after: int = 400) -> Built:
    """Learn ``phases`` (events each, one after the other), then roll back to
    ``rollback_to`` (lineage 1) and learn ``after`` more. Marks: ``before`` (before the
    model existed), ``p0``, ``p1``.. after each phase, ``rollback``, ``after``."""
    settings = history_settings(settings, key)
    await provision(settings)
    name = settings.models[0].name
    marks = {"before": (_now_ms(), 0, 0)}
    async with running_worker(settings) as worker:
        learner = worker.learners[0]  # type: ignore[index]
        seq = 0
        for i, n in enumerate(phases):
            report = await produce(settings, "agrawal", n, seed=10 + i)
            seq += report.valid
            await until(lambda s=seq: learner.durable_seq >= s, 60)
            marks[f"p{i}"] = (_now_ms(), seq, 0)
        if rollback_to is not None:
            from riverbed.cli_history import rollback_command

            with contextlib.redirect_stdout(io.StringIO()):
                code = await asyncio.to_thread(rollback_command, settings, name, rollback_to,
                                               "test rollback", True)
            assert code == 0
            await until(lambda: worker.models[0].lineage == 1
                        and worker.models[0].seq == rollback_to, 30)
            marks["rollback"] = (_now_ms(), rollback_to, 1)
            report = await produce(settings, "agrawal", after, seed=99)
            target = rollback_to + report.valid
            await until(lambda: learner.durable_seq >= target, 60)
            marks["after"] = (_now_ms(), target, 1)
    return Built(settings, key, marks, name)


async def copy_history(built: Built, suffix: str,
                       change: Callable[[HistoryEvent], HistoryEvent] | None = None,
                       extra: Sequence[tuple[bytes | None, bytes]] = ()) -> Settings:
    """A copy of ``built``'s history in a fresh topic (each event through ``change``), then
    ``extra`` raw (key, value) records, unsigned; the settings that read the copy. The
    events are signed with ``built.key``: the copy is as authentic as the original."""
    events = await read_model_history(built.settings, built.name)
    topic = built.settings.topics.history + suffix
    copied = dataclasses.replace(built.settings, topics=dataclasses.replace(
        built.settings.topics, history=topic))
    await provision(copied)
    producer = BatchProducer(built.settings.broker)
    await producer.start()
    kafka: Any = producer.producer
    try:
        for event in events:
            event = change(event) if change else event
            value = encode_event(event)
            await (await kafka.send(topic, value, key=event.model.encode(), partition=0,
                                    headers=record_headers(event, value, built.key)))
        for key, value in extra:
            await (await kafka.send(topic, value, key=key, partition=0))
    finally:
        await producer.stop()
    return copied


def cli(settings: Settings, key: bytes, *args: str, stdin: str = "",
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``riverbed ARGS -c CONFIG`` in a child process pointed at ``settings``."""
    return subprocess.run([sys.executable, "-m", "riverbed.cli", *args, "-c", str(CONFIG)],
                          env=worker_env(settings, key.hex()), cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def last_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object on the last stdout line."""
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {done.stderr}"
    return dict(json.loads(lines[-1]))
