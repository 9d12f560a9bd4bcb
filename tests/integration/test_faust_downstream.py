"""Faust where it serves: a downstream Faust app (the README's example, run as written)
consumes a worker's predictions with an ordinary agent; the worker itself starts no Faust
consumer group of its own."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.produce import produce
from tests.conftest import ROOT
from tests.helpers import collect, provision, running_worker

pytestmark = pytest.mark.integration

EXAMPLE = re.search(r"```py\n(# alerts\.py.*?)```", (ROOT / "README.md").read_text(),
                    flags=re.S)


async def _topics(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_the_worker_runs_no_faust_consumer(settings: Settings) -> None:
    """A started Faust consumer creates its assignor's leader topic ``<app id>-__assignor-
    __leader`` before it joins its group; the worker's app never does."""
    await provision(settings)
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal", 200, seed=5)
        await collect(settings, settings.topics.predictions, 4, report.valid)
        topics = await _topics(settings)
        app_id = worker.app.conf.id
    assert settings.topics.events in topics  # the listing works
    assert not [t for t in topics if t.startswith(app_id)], topics


async def test_the_readme_faust_agent_consumes_predictions(settings: Settings,
                                                           tmp_path: Path) -> None:
    assert EXAMPLE is not None, "README: the ```py block starting '# alerts.py' is gone"
    code = EXAMPLE.group(1)
    assert 'broker="kafka://127.0.0.1:9092"' in code
    servers = settings.broker.bootstrap_servers
    code = code.replace("kafka://127.0.0.1:9092", f"kafka://{servers}")
    code = code.replace('"riverbed.predictions"', repr(settings.topics.predictions))
    code = code.replace('"riverbed-alerts"', repr(f"{settings.worker.group_id}-alerts"))
    # the embedded broker completes a new group's join after the session timeout (Faust's
    # default: 60 s); a short one keeps the test short (Apache Kafka joins at once)
    code = code.replace("web_enabled=False)", "web_enabled=False, broker_session_timeout=3)")
    assert "broker_session_timeout=3" in code
    (tmp_path / "alerts.py").write_text(code)
    await provision(settings)
    async with running_worker(settings):
        report = await produce(settings, "agrawal", 600, seed=9)
        records = await collect(settings, settings.topics.predictions, 4, report.valid)
    decode = AvroCodec(load_schema("prediction")).decode
    flagged = {decode(r.value)["event_id"] for r in records if decode(r.value)["prediction"] == 1}
    assert flagged, "the model flagged nothing: the example would print nothing to compare"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "faust", "-A", "alerts", "worker", "-l", "warn",
               "--without-web"]
    child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        alerted = await _read_alerts(child, len(flagged), timeout_s=90)
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    assert alerted == flagged


async def _read_alerts(child: subprocess.Popen[str], expected: int, timeout_s: float
                       ) -> set[str]:
    """The event ids of the child's ALERT lines, read until ``expected`` arrived (Faust
    turns a worker's prints into log lines: the text is found inside them)."""
    assert child.stdout is not None
    alerted: set[str] = set()
    deadline = time.monotonic() + timeout_s
    loop = asyncio.get_running_loop()
    while len(alerted) < expected:
        remaining = deadline - time.monotonic()
        assert remaining > 0 and child.poll() is None, \
            f"{len(alerted)}/{expected} alerts; the example app exited {child.poll()}"
        line = await asyncio.wait_for(loop.run_in_executor(None, child.stdout.readline),
                                      remaining)
        found = re.search(r"ALERT (\S+) by ", line)
        if found:
            alerted.add(found.group(1))
    return alerted
