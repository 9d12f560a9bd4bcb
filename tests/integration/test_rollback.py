"""Rollback: the live worker continues from the restored state, with a new lineage."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.produce import produce
from riverbed.streams.replay import replay
from tests.conftest import CONFIG, ROOT
from tests.helpers import collect, provision, running_worker, until, worker_env

pytestmark = pytest.mark.integration
KEY = os.urandom(32)


async def test_rollback_restores_state_and_lineage(settings: Settings,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="riverbed.agents.ownership")
    settings = dataclasses.replace(settings, history=dataclasses.replace(
        settings.history, snapshot_every_steps=1000, snapshot_key=KEY.hex()))
    await provision(settings)
    name = settings.models[0].name
    async with running_worker(settings) as worker:
        learner = worker.learners[0]  # type: ignore[index]
        first = await produce(settings, "agrawal", 4000, seed=1)
        await until(lambda: learner.durable_seq >= first.valid, 60)
        at_n = await replay(settings, name, KEY, to_seq=2500)
        recorded = (await replay(settings, name, KEY, to_seq=2000, verify=True))
        assert recorded.mismatches == []
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "riverbed.cli", "rollback", name, "--to-seq", "2500",
            "--reason", "bad upstream data", "-c", str(CONFIG), "--json"],
            env=worker_env(settings, KEY.hex()), cwd=ROOT, capture_output=True, text=True,
            timeout=120)
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout.splitlines()[-1])
        from riverbed.streams.snapshots import fingerprint
        probe = at_n.fold.created.probe  # type: ignore[union-attr]
        assert info["fingerprint"] == fingerprint(at_n.model.estimator, probe)
        # the live worker is fenced, takes over again and holds the state at seq 2500
        await until(lambda: worker.models[0].lineage == 1, 30)
        # an expected event, logged as the rollback it is, not as an alarming fence
        assert not [r for r in caplog.records if "fenced by a newer epoch" in r.getMessage()]
        assert [r for r in caplog.records if "rolled back by `riverbed rollback`" in
                r.getMessage()]
        live = worker.describe_models()[name]
        assert live["seq"] == 2500 and live["fingerprint"] == info["fingerprint"]
        second = await produce(settings, "agrawal", 500, seed=2)
        await until(lambda: learner.durable_seq >= 2500 + second.valid, 60)
        predictions = await collect(settings, settings.topics.predictions, 4,
                                    first.valid + second.valid, settle_s=0.5)
    decoder = AvroCodec(load_schema("prediction"))
    new_ids = set(second.labels)
    after = [p for p in (decoder.decode(r.value) for r in predictions) if p["event_id"] in new_ids]
    assert len(after) == second.valid
    assert all(p["lineage"] == 1 for p in after)
    assert sorted(p["model_seq"] for p in after) == list(range(2500, 2500 + second.valid))
    history = await replay(settings, name, KEY, verify=True, from_genesis=True)
    assert history.fold.lineage == 1 and history.fold.seq == 2500 + second.valid
    assert history.mismatches == []
