"""The registry path of a worker against the registry double (tests/registry_double.py) and
the embedded broker: Confluent-framed events, a registry outage mid-stream, a real 404."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import struct
import sys
from collections import Counter

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.broker import free_port
from riverbed.streams.codec import AvroCodec, ConfluentCodec
from riverbed.streams.config import RegistrySettings, Settings
from riverbed.streams.datasets import events
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.produce import produce
from riverbed.streams.registry import RegistryClient
from tests.conftest import CONFIG, ROOT
from tests.helpers import collect, provision, running_worker, send_raw, until, worker_env
from tests.registry_double import RegistryDouble

pytestmark = pytest.mark.integration


def _v2() -> dict:
    schema = load_schema("agrawal_event")
    schema["fields"].append({"name": "branch", "type": "string", "default": "none"})
    return schema


async def test_events_wait_out_a_registry_outage_and_only_a_real_404_is_a_dead_letter(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    await provision(settings)
    async with RegistryDouble() as double:
        registry = RegistrySettings(url=double.url, backoff_initial_s=0.05, backoff_max_s=0.5,
                                    warn_interval_s=1.0, request_timeout_s=1.0)
        s = dataclasses.replace(settings, registry=registry)
        async with RegistryClient(registry) as producer_registry:
            # unlabelled events, their labels following on the labels topic (framed as well)
            report = await produce(s, "agrawal", 400, seed=3, registry=producer_registry,
                                   label_delay_s=0.2)
        v2 = _v2()
        v2_id = double.add(v2)  # a producer's v2 writer schema, never seen by the worker
        later = list(events("agrawal", 300, seed=4))
        writer = AvroCodec(v2)
        framed = [(e["key"].encode(), b"\x00" + struct.pack(">I", v2_id) + writer.encode(
            {**e, "branch": "north"})) for e in later]
        unknown = b"\x00" + struct.pack(">I", 999) + writer.encode({**later[0], "branch": "x"})
        with caplog.at_level(logging.WARNING, logger="riverbed.streams.registry"):
            async with running_worker(s) as worker:
                assert worker.registry is not None
                stats, client = worker.stats, worker.registry

                def predicted() -> int:
                    return sum(stats.predictions.values())

                def dead() -> int:
                    return sum(stats.dead_letters.values())

                await until(lambda: predicted() == report.valid, 60)
                await until(lambda: sum(stats.learned.values()) == report.valid, 60)  # labels
                await double.go_down()  # connection refused from now on
                await send_raw(s, [*framed, (b"k-unknown", unknown)], partition=0)
                failed = client.failed_requests
                await until(lambda: client.failed_requests >= failed + 8, 30)
                # the batch waits: nothing of it was predicted or dead-lettered meanwhile
                assert (predicted(), dead()) == (report.valid, 0)
                await double.come_back()
                await until(lambda: predicted() == report.valid + len(later) and dead() == 1, 60)
                outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
        predictions = await collect(s, s.topics.predictions, s.topics.partitions,
                                    report.valid + len(later), settle_s=1.0)
        dead_letters = await collect(s, s.topics.dead_letters, 1, 1, settle_s=0.5)
        async with RegistryClient(registry) as reader_registry:
            decoder = ConfluentCodec(reader_registry, load_schema("prediction"), "p")
            await reader_registry.prefetch(decoder.unknown_ids(r.value for r in predictions))
            decoded = [decoder.decode(r.value) for r in predictions]
    ids = Counter(p["event_id"] for p in decoded)
    assert len(ids) == report.valid + len(later) and set(ids.values()) == {1}  # each once
    assert {e["event_id"] for e in later} <= set(ids)
    assert [parse_headers(r.headers)["reason"] for r in dead_letters] == ["unknown_schema_id"]
    assert dead_letters[0].value == unknown
    # one warning per second of outage at most (plus the first), not one per attempt
    assert 1 <= len(outage_lines) <= 8


PASSWORD = "s3cret-Pa55"


async def _riverbed(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``riverbed ARGS -c CONFIG`` as a child process (killed by PID after 120 s)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "riverbed.cli", *args, "-c", str(CONFIG), env=env,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(child.communicate(), 120)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_the_cli_produces_and_tails_confluent_framed_records_with_basic_auth(
        settings: Settings) -> None:
    await provision(settings)
    async with RegistryDouble(username="ci", password=PASSWORD) as double:
        env = {**worker_env(settings, "00" * 32), "RIVERBED_REGISTRY__URL": double.url,
               "RIVERBED_REGISTRY__USERNAME": "ci", "RIVERBED_REGISTRY__PASSWORD": PASSWORD}
        code, _, err = await _riverbed(env, "produce", "-n", "50", "--label-delay", "0.1")
        assert code == 0, err
        records = await collect(settings, settings.topics.events, settings.topics.partitions, 50)
        schema_id = double.add(load_schema("agrawal_event"))  # what produce registered
        assert {r.value[:5] for r in records} == {b"\x00" + struct.pack(">I", schema_id)}
        labels = await collect(settings, settings.topics.labels, settings.topics.partitions, 50)
        assert {r.value[:5] for r in labels} == {
            b"\x00" + struct.pack(">I", double.add(load_schema("label")))}
        code, out, err = await _riverbed(env, "tail", settings.topics.events, "--max", "50",
                                         "--idle-timeout", "2")
        assert code == 0, err
        tailed = [json.loads(line) for line in out.splitlines()]
        assert len(tailed) == 50 and all("_error" not in t and t["event_id"] for t in tailed)
        wrong = {**env, "RIVERBED_REGISTRY__PASSWORD": "Wr0ng-Pa55"}
        code, out, err = await _riverbed(wrong, "produce", "-n", "5")
    assert code == 1 and err.count("\n") == 1 and "refused the credentials" in err, err
    assert "Pa55" not in out + err


async def test_a_worker_refused_by_the_registry_stops_with_one_line_and_dead_letters_nothing(
        settings: Settings) -> None:
    await provision(settings)
    async with RegistryDouble(username="ci", password=PASSWORD) as double:
        registry = RegistrySettings(url=double.url, username="ci", password=PASSWORD)
        async with RegistryClient(registry) as producer_registry:
            await produce(dataclasses.replace(settings, registry=registry), "agrawal", 20,
                          registry=producer_registry)
        env = {**worker_env(settings, "00" * 32), "RIVERBED_REGISTRY__URL": double.url,
               "RIVERBED_REGISTRY__USERNAME": "ci", "RIVERBED_REGISTRY__PASSWORD": "Wr0ng-Pa55"}
        code, out, err = await _riverbed(env, "worker", "--web-port", str(free_port()),
                                         "--log-level", "warning")
    assert code == 1
    lines = [line for line in err.splitlines() if "schema registry" in line]
    assert len(lines) == 1 and "refused the credentials (HTTP 401)" in lines[0], err
    assert "Pa55" not in out + err
    assert await collect(settings, settings.topics.dead_letters, 1, 1, timeout_s=1.0) == []
