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


def _role(child: WorkerChild) -> str | None:
    stats = child.get("/riverbed/stats")
    return None if stats is None else stats.get("role")


async def _roles(children: list[WorkerChild], want_active: int, timeout_s: float
                 ) -> list[str | None]:
    """Wait until exactly ``want_active`` children are active and the others standbys."""
    deadline = time.monotonic() + timeout_s
    roles: list[str | None] = []
    while time.monotonic() < deadline:
        for child in children:
            assert child.process.poll() is None, f"worker died: {child.process.returncode}"
        roles = [await asyncio.to_thread(_role, c) for c in children]
        if roles.count("active") == want_active and roles.count("standby") == len(
                children) - want_active:
            return roles
        await asyncio.sleep(0.1)
    raise AssertionError(f"roles not reached before the deadline: {roles}")


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
    children = [WorkerChild(env) for _ in range(workers)]
    try:
        roles = await _roles(children, 1, 90)
        sent = 0
        for kill in range(2):  # SIGKILL the active worker twice, mid-stream
            batch = rng.randrange(3_000, 6_000)
            await send_raw(settings, records[sent: sent + batch], partition=None)
            sent += batch
            active = children[roles.index("active")]
            await active.wait_for(lambda m, t=rng.randrange(sent // 2, sent): m["seq"] >= t, 90)
            active.kill()
            children.remove(active)
            children.append(WorkerChild(env))  # a supervisor restarts it: a new standby
            roles = await _roles(children, 1, 90)
        await send_raw(settings, records[sent:], partition=None)
        active = children[roles.index("active")]
        live = await active.wait_for(lambda m: m["durable_seq"] >= EVENTS, 180)
        standby = children[roles.index("standby")]
        await standby.wait_for(lambda m: m["seq"] >= EVENTS, 60)  # standbys follow
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()
    state, effects = fold("agrawal-lr", await read_model_history(settings, "agrawal-lr"))
    applied = [x.event_id for x in examples_of(effects)]
    assert len(applied) == len(set(applied)) == EVENTS  # nothing learned twice
    assert set(applied) == {e["event_id"] for e in stream}  # nothing lost
    assert live["seq"] == state.seq == EVENTS and state.counters.stale_writes == 0
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
