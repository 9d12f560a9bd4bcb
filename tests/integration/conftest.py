"""A worker process with a life worth looking at, shared by the web API, fuzz, page and
README tests: learned through a concept drift (an ADWIN drift annotation), rolled back with
``riverbed rollback``, then learned more (lineage 1)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from riverbed.streams.config import Settings
from riverbed.streams.produce import produce
from tests.conftest import CONFIG, ROOT, unique_settings
from tests.helpers import WorkerChild, provision, worker_env


@dataclasses.dataclass
class WebWorker:
    """A running ``riverbed worker`` child and how to reach it."""

    child: WorkerChild
    settings: Settings
    env: dict[str, str]
    model: str = "agrawal-lr"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.child.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read())


def _wait(child: WorkerChild, predicate: Any, timeout_s: float) -> dict[str, Any]:
    return asyncio.run(child.wait_for(predicate, timeout_s))


def _history_kinds(worker: WebWorker) -> set[str]:
    page = worker.get(f"/models/{worker.model}/history?limit=1000")
    return {e["kind"] for e in page["entries"]}


@pytest.fixture(scope="session")
def web_worker(example_settings: Settings, broker: Any) -> Iterator[WebWorker]:
    """The worker (stopped by PID at the end of the session)."""
    settings = unique_settings(example_settings, broker.bootstrap_servers)
    # one partition: "after the concept change" must mean after it in processing order
    settings = dataclasses.replace(settings, topics=dataclasses.replace(
        settings.topics, partitions=1))
    key = os.urandom(32).hex()
    env = {**worker_env(settings, key), "RIVERBED_TOPICS__PARTITIONS": "1",
           "RIVERBED_HISTORY__SNAPSHOT_EVERY_STEPS": "2500",
           "RIVERBED_LIMITS__MAX_BATCH_RECORDS": "200"}
    asyncio.run(provision(settings))
    child = WorkerChild(env)
    worker = WebWorker(child, settings, env)
    try:
        first = asyncio.run(produce(settings, "agrawal-drift", 8000, seed=3))
        _wait(child, lambda m: m["durable_seq"] >= first.valid, 120)
        deadline = time.monotonic() + 30
        while "drift" not in _history_kinds(worker):
            assert time.monotonic() < deadline, "no drift annotation in the history"
            time.sleep(0.2)
        done = subprocess.run(
            [sys.executable, "-m", "riverbed.cli", "rollback", worker.model,
             "--to-seq", "3000", "--reason", "drifted: back to before the change",
             "-c", str(CONFIG)], env=env, cwd=ROOT, capture_output=True, text=True, check=False,
            timeout=120)
        assert done.returncode == 0, done.stderr
        _wait(child, lambda m: m["lineage"] == 1 and m["seq"] >= 3000, 60)
        second = asyncio.run(produce(settings, "agrawal", 3000, seed=4))
        _wait(child, lambda m: m["lineage"] == 1 and m["durable_seq"] >= 3000 + second.valid,
              120)
        yield worker
    finally:
        child.kill()
