"""Fuzz a running worker (issue riverbed 5): arbitrary bytes and schema-valid hostile records
on the events and labels topics. The worker must stay up, predict every valid event once,
learn every valid labelled id once, dead-letter every bad record, and its history must
verify. ``python -m tests.fuzz_long`` runs the same for longer."""

from __future__ import annotations

import os

import pytest

from riverbed.streams.config import Settings
from tests.fuzzing import Oracle, check_outcome, fuzz
from tests.helpers import WorkerChild, provision, worker_env

pytestmark = pytest.mark.integration


async def test_a_worker_survives_hostile_events_and_labels(settings: Settings) -> None:
    await provision(settings)
    env = worker_env(settings, os.urandom(32).hex())
    child = WorkerChild(env)
    try:
        await child.wait_for(lambda model: model["epoch"] is not None, 60)
        oracle = Oracle(settings)
        alive = lambda: child.process.poll() is None  # noqa: E731
        await __import__("asyncio").to_thread(fuzz, settings, oracle, alive, 4)
        assert oracle.dead_letters > 0 and oracle.valid_events and oracle.learned
        await check_outcome(settings, oracle, alive, env)
    finally:
        child.kill()
