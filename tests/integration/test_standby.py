"""Several workers on one global model (issue riverbed 5): exactly one is active, the others
are standbys that follow the history and take over when the active one is SIGKILLed.
Learned steps == distinct labelled ids, whatever is killed when; a worker whose start fails
writes nothing to the history."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.history import Claimed, examples_of, fold
from riverbed.streams.replay import read_model_history
from tests.conftest import CONFIG, ROOT
from tests.helpers import WorkerChild, provision, send_raw, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]
EVENTS = 20_000


#: a worker that lost the lease exits 75 (EX_TEMPFAIL) for its supervisor to restart it
LEASE_LOST = 75


def _role(child: WorkerChild) -> str | None:
    stats = child.get("/riverbed/stats")
    return None if stats is None else stats.get("role")


class _Supervised:
    """The test's workers, restarted like a supervisor would: a worker that exits 75
    (it lost the lease, e.g. starved of CPU past the 1.5 s lease session on a loaded
    host) is started again and comes back as a standby; any other exit fails the test."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.env = env
        self.children = [WorkerChild(env) for _ in range(workers)]
        self.restarts = 0

    def check(self) -> None:
        for i, child in enumerate(self.children):
            code = child.process.poll()
            if code == LEASE_LOST:
                self.children[i] = WorkerChild(self.env)
                self.restarts += 1
            else:
                assert code is None, f"worker died: {code}"

    async def roles(self, timeout_s: float) -> list[str | None]:
        """Wait until exactly one worker is active and the others standbys."""
        deadline = time.monotonic() + timeout_s
        roles: list[str | None] = []
        while time.monotonic() < deadline:
            self.check()
            roles = [await asyncio.to_thread(_role, c) for c in self.children]
            if roles.count("active") == 1 and roles.count("standby") == len(roles) - 1:
                return roles
            await asyncio.sleep(0.1)
        raise AssertionError(f"roles not reached before the deadline: {roles}")

    async def active_where(self, predicate: Any, timeout_s: float
                           ) -> tuple[WorkerChild, dict[str, Any]]:
        """The active worker once its model state satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            self.check()
            for child in self.children:
                if await asyncio.to_thread(_role, child) == "active":
                    models = await asyncio.to_thread(child.get, "/riverbed/models")
                    state = None if models is None else models["agrawal-lr"]
                    if state is not None and predicate(state):
                        return child, state
            await asyncio.sleep(0.05)
        raise AssertionError(f"condition not reached before the deadline; last state {state}")

    def kill_all(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.kill()


@pytest.mark.parametrize("workers", [2, 3])
async def test_one_active_worker_and_standbys_learn_every_event_once_through_sigkills(
    settings: Settings, workers: int,
) -> None:
    key_hex = os.urandom(32).hex()
    settings = dataclasses.replace(settings, history=dataclasses.replace(
        settings.history, snapshot_key=key_hex))
    await provision(settings)
    env = worker_env(settings, key_hex)
    codec = AvroCodec(load_schema("agrawal_event"))
    stream = list(events("agrawal", EVENTS, seed=workers))
    records = [(e["key"].encode(), codec.encode(e)) for e in stream]
    rng = random.Random(workers)
    group = _Supervised(env, workers)
    try:
        await group.roles(90)
        sent = 0
        for kill in range(2):  # SIGKILL the active worker twice, mid-stream
            batch = rng.randrange(3_000, 6_000)
            await send_raw(settings, records[sent: sent + batch], partition=None)
            sent += batch
            active, _ = await group.active_where(
                lambda m, t=rng.randrange(sent // 2, sent): m["seq"] >= t, 90)
            active.kill()
            group.children.remove(active)
            group.children.append(WorkerChild(env))  # a supervisor restarts it: a standby
            await group.roles(90)
        await send_raw(settings, records[sent:], partition=None)
        _, live = await group.active_where(lambda m: m["durable_seq"] >= EVENTS, 180)
        roles = await group.roles(60)
        standby = group.children[roles.index("standby")]
        await standby.wait_for(lambda m: m["seq"] >= EVENTS, 60)  # standbys follow
    finally:
        group.kill_all()
    state, effects = fold("agrawal-lr", await read_model_history(settings, "agrawal-lr"))
    applied = [x.event_id for x in examples_of(effects)]
    assert len(applied) == len(set(applied)) == EVENTS  # nothing learned twice
    assert set(applied) == {e["event_id"] for e in stream}  # nothing lost
    assert live["seq"] == state.seq == EVENTS
    if group.restarts == 0:  # a worker that lost its lease may have written into the void
        assert state.counters.stale_writes == 0
    verify = subprocess.run([sys.executable, "-m", "riverbed.cli", "replay", "agrawal-lr",
                             "-c", str(CONFIG), "--verify", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_worker_whose_start_fails_leaves_the_history_untouched(
    settings: Settings,
) -> None:
    key_hex = os.urandom(32).hex()
    await provision(settings)
    env = worker_env(settings, key_hex)
    active = WorkerChild(env)
    try:
        await active.wait_for(lambda m: m["epoch"] == 1, 90)
        before = await read_model_history(settings, "agrawal-lr")
        with socket.socket() as taken:  # the second worker's web port is in use
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            failed = subprocess.run(
                [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(CONFIG),
                 "--web-port", str(port)], env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=120)
        assert failed.returncode != 0 and "in use" in failed.stderr
        after = await read_model_history(settings, "agrawal-lr")
        assert [e for e in after if isinstance(e.body, Claimed)] == [
            e for e in before if isinstance(e.body, Claimed)]  # no claim, nobody fenced
        assert (await active.wait_for(lambda m: True, 5))["epoch"] == 1
        assert _role(active) == "active"
    finally:
        active.kill()
