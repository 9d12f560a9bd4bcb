"""The schema-registry path against a real Confluent-API registry: Apicurio Registry 2.4.2
in memory (streams/apicurio.py, built by deploy/registry/pom.xml), on the session's broker
(the embedded one, or Apache Kafka with --broker kafka). Skips where it is not built,
except under CI=true, where that fails."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
from collections import Counter
from collections.abc import Iterator

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.apicurio import ApicurioRegistry, apicurio_available
from riverbed.streams.codec import AvroCodec, ConfluentCodec
from riverbed.streams.config import RegistrySettings, Settings
from riverbed.streams.datasets import events
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.errors import DecodeError
from riverbed.streams.produce import produce
from riverbed.streams.registry import RegistryClient
from tests.helpers import collect, provision, running_worker, send_raw, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def apicurio() -> Iterator[ApicurioRegistry]:
    missing = apicurio_available()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Apicurio Registry under CI=true: {missing}")
        pytest.skip(missing)
    with ApicurioRegistry() as registry:
        yield registry
    assert registry.process is None


def _settings(url: str) -> RegistrySettings:
    return RegistrySettings(url=url, backoff_initial_s=0.05, backoff_max_s=0.5,
                            warn_interval_s=1.0, request_timeout_s=1.0)


def _v2(name: str = "branch") -> dict:
    schema = load_schema("agrawal_event")
    schema["fields"].append({"name": name, "type": "string", "default": "none"})
    return schema


EVENT = next(events("agrawal", 1, seed=9))


async def test_register_frame_and_read_a_v2_record_as_v1_and_wait_out_a_stopped_registry(
        apicurio: ApicurioRegistry) -> None:
    subject = f"t{os.getpid()}-{id(apicurio)}-value"
    async with RegistryClient(_settings(apicurio.url)) as client:
        v1 = await client.register(subject, load_schema("agrawal_event"))
        v2_schema = _v2()
        v2 = await client.register(subject, v2_schema)
        assert v1 != v2 and await client.register(subject, v2_schema) == v2  # idempotent
        writer = ConfluentCodec(client, v2_schema, subject)
        payload = writer.encode({**EVENT, "branch": "north"})
        assert payload[:5] == b"\x00" + struct.pack(">I", v2)
    async with RegistryClient(_settings(apicurio.url)) as client:  # a fresh cache
        reader = ConfluentCodec(client, load_schema("agrawal_event"), subject)
        unknown = b"\x00" + struct.pack(">I", 987654) + payload[5:]
        await client.prefetch(reader.unknown_ids([payload, unknown]))
        assert reader.decode(payload) == EVENT  # v2 written, v1 read
        with pytest.raises(DecodeError) as info:
            reader.decode(unknown)  # Apicurio's 404 carries error_code 40403
        assert info.value.reason == "unknown_schema_id"
        async with RegistryClient(_settings(apicurio.url)) as producer:  # not in our cache
            other = await producer.register(f"{subject}-other", _v2("region"))
        fresh = ConfluentCodec(client, load_schema("agrawal_event"), subject)
        apicurio.pause()  # SIGSTOP: connections hang
        try:
            waiting = asyncio.ensure_future(client.prefetch({other}))
            failed = client.failed_requests
            await until(lambda: client.failed_requests >= failed + 2, 30)
            assert not waiting.done()
        finally:
            apicurio.resume()
        await asyncio.wait_for(waiting, 30)
        framed = b"\x00" + struct.pack(">I", other) + AvroCodec(_v2("region")).encode(
            {**EVENT, "region": "x"})
        assert fresh.decode(framed) == EVENT


async def test_a_worker_predicts_every_event_across_a_stopped_registry(
        settings: Settings, apicurio: ApicurioRegistry) -> None:
    await provision(settings)
    registry = _settings(apicurio.url)
    s = dataclasses.replace(settings, registry=registry)
    async with RegistryClient(registry) as producer:
        report = await produce(s, "agrawal", 300, seed=3, registry=producer)
        v2_schema = _v2()
        v2 = await producer.register(f"{s.topics.events}-value", v2_schema)
    later = list(events("agrawal", 200, seed=4))
    writer = AvroCodec(v2_schema)
    framed = [(e["key"].encode(), b"\x00" + struct.pack(">I", v2) + writer.encode(
        {**e, "branch": "south"})) for e in later]
    async with running_worker(s) as worker:
        stats, client = worker.stats, worker.registry
        assert client is not None

        def predicted() -> int:
            return sum(stats.predictions.values())

        await until(lambda: predicted() == report.valid, 60)
        apicurio.pause()
        try:
            await send_raw(s, framed, partition=1)
            failed = client.failed_requests
            await until(lambda: client.failed_requests >= failed + 3, 30)
            assert predicted() == report.valid and not stats.dead_letters
        finally:
            apicurio.resume()
        await until(lambda: predicted() == report.valid + len(later), 60)
    predictions = await collect(s, s.topics.predictions, s.topics.partitions,
                                report.valid + len(later), settle_s=1.0)
    dead = await collect(s, s.topics.dead_letters, 1, 1, timeout_s=1.0)
    async with RegistryClient(registry) as reader_registry:
        decoder = ConfluentCodec(reader_registry, load_schema("prediction"), "p")
        await reader_registry.prefetch(decoder.unknown_ids(r.value for r in predictions))
        ids = Counter(decoder.decode(r.value)["event_id"] for r in predictions)
    assert len(ids) == report.valid + len(later) and set(ids.values()) == {1}
    assert [parse_headers(r.headers)["reason"] for r in dead] == []
