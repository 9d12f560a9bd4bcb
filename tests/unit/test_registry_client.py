"""The async schema-registry client against the registry double (tests/registry_double.py):
cache, expiring 404s, retries with backoff, bounded logging, basic auth, TLS."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec, ConfluentCodec
from riverbed.streams.config import RegistrySettings
from riverbed.streams.errors import (
    ConfigError,
    DecodeError,
    SchemaNotLoadedError,
    SchemaRegistryError,
)
from riverbed.streams.registry import (
    CONTENT_TYPE,
    RegistryClient,
    SchemaPrefetch,
    ssl_context,
)
from tests.certs import make_certs
from tests.registry_double import RegistryDouble

SCHEMA = load_schema("agrawal_event")
EVENT = {"event_id": "e1", "key": "k1", "timestamp": 1_700_000_000_000, "salary": 1.5,
         "commission": 0.0, "age": 30, "elevel": 1, "car": 2, "zipcode": 3, "hvalue": 4.0,
         "hyears": 5, "loan": 6.0, "label": 1}
BODY = AvroCodec(SCHEMA).encode(EVENT)
PASSWORD = "s3cret-Pa55"
LOGGER = "riverbed.streams.registry"


def framed(schema_id: int) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + BODY


def other_schema(n: int) -> dict:
    return {"type": "record", "name": f"R{n}", "fields": [{"name": "x", "type": "long"}]}


class FakeTime:
    """A clock that moves only when the client sleeps (its backoff); records the sleeps."""

    def __init__(self, on_sleep: Callable[[int], object] | None = None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            result = self.on_sleep(len(self.sleeps))
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(0)


def client_for(url: str, time: FakeTime | None = None, give_up_after_s: float | None = None,
               **settings: object) -> RegistryClient:
    base = RegistrySettings(url=url, backoff_initial_s=0.1, backoff_max_s=1.6,
                            request_timeout_s=2.0)
    time = time or FakeTime()
    return RegistryClient(dataclasses.replace(base, **settings),  # type: ignore[arg-type]
                          give_up_after_s=give_up_after_s, clock=time.clock, sleep=time.sleep,
                          jitter=lambda: 1.0)


async def test_a_schema_is_fetched_once_and_decodes() -> None:
    async with RegistryDouble() as double, client_for(double.url) as client:
        schema_id = double.add(SCHEMA)
        codec = ConfluentCodec(client, SCHEMA, "events-value")
        assert codec.unknown_ids([framed(schema_id), b"\x01plain", None]) == {schema_id}
        await client.prefetch(codec.unknown_ids([framed(schema_id)]))
        assert codec.decode(framed(schema_id)) == EVENT
        assert codec.unknown_ids([framed(schema_id)]) == set()  # its reader is compiled
        await client.prefetch([schema_id])
        assert double.count(method="GET") == 1
        assert double.seen[0].path == f"/schemas/ids/{schema_id}"


async def test_an_id_nobody_prefetched_is_a_callers_bug_not_an_event_error() -> None:
    async with RegistryDouble() as double, client_for(double.url) as client:
        codec = ConfluentCodec(client, SCHEMA, "events-value")
        with pytest.raises(SchemaNotLoadedError):
            codec.decode(framed(double.add(SCHEMA)))
        with pytest.raises(SchemaNotLoadedError):  # encoding before registering
            codec.encode(EVENT)
        assert not isinstance(SchemaNotLoadedError("x"), DecodeError)


async def test_the_cache_is_bounded_and_keeps_every_id_of_the_latest_prefetch() -> None:
    async with RegistryDouble() as double, client_for(double.url, cache_size=2) as client:
        ids = [double.add(other_schema(n)) for n in range(3)]
        for schema_id in ids:
            await client.prefetch([schema_id])
        assert double.count(method="GET") == 3
        with pytest.raises(SchemaNotLoadedError):  # the least recently used went out
            client.schema_by_id(ids[0])
        await client.prefetch([ids[0]])
        assert double.count(method="GET") == 4
        await client.prefetch(ids)  # more ids than the bound: all of them stay for the batch
        assert [client.schema_by_id(i) for i in ids] == [other_schema(n) for n in range(3)]
        await client.prefetch([ids[2]])  # the next prefetch releases them
        client.cache.put(99, other_schema(99))
        assert sum(1 for i in ids if i in client.cache._schemas) <= 2


async def test_a_404_is_believed_for_missing_ttl_s_then_asked_again() -> None:
    time = FakeTime()
    async with RegistryDouble() as double, client_for(double.url, time,
                                                      missing_ttl_s=10.0) as client:
        codec = ConfluentCodec(client, SCHEMA, "events-value")
        await client.prefetch(codec.unknown_ids([framed(7)]))
        with pytest.raises(DecodeError) as info:
            codec.decode(framed(7))
        assert info.value.reason == "unknown_schema_id"
        double.add(SCHEMA, schema_id=7)  # registered after the 404
        time.now += 5
        await client.prefetch(codec.unknown_ids([framed(7)]))
        assert double.count(method="GET") == 1  # still believed
        with pytest.raises(DecodeError):
            codec.decode(framed(7))
        time.now += 6
        await client.prefetch(codec.unknown_ids([framed(7)]))
        assert double.count(method="GET") == 2
        assert codec.decode(framed(7)) == EVENT


@pytest.mark.parametrize("fault", ["500", "hang", "close"])
async def test_5xx_timeouts_and_dropped_connections_are_retried_with_backoff(fault: str) -> None:
    time = FakeTime()
    async with RegistryDouble() as double, client_for(double.url, time,
                                                      request_timeout_s=0.3) as client:
        schema_id = double.add(SCHEMA)
        double.fail(fault, times=4)  # type: ignore[arg-type]
        await client.prefetch([schema_id])
        assert client.schema_by_id(schema_id) == SCHEMA
        assert double.count(fault) == 4 and double.count("200") == 1
        # doubling (jitter fixed at 1); aiohttp itself sends a GET again once when a kept-alive
        # connection was dropped, so 4 dropped connections may cost only 2 of our attempts
        assert time.sleeps == [0.1, 0.2, 0.4, 0.8][: 2 if fault == "close" else 4]


async def test_the_backoff_is_capped_and_jittered() -> None:
    time = FakeTime()
    async with RegistryDouble() as double, client_for(double.url, time) as client:
        schema_id = double.add(SCHEMA)
        double.fail("500", times=7)
        await client.prefetch([schema_id])
        assert time.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
        client._jitter = lambda: 0.0  # the lowest jitter: half the delay
        double.fail("500", times=1)
        await client.register("s", SCHEMA | {"doc": "v2"})
        assert time.sleeps[-1] == 0.05


async def test_an_outage_of_many_ids_costs_one_request_per_retry() -> None:
    time = FakeTime()
    async with RegistryDouble() as double, client_for(double.url, time) as client:
        ids = [double.add(other_schema(n)) for n in range(50)]
        double.fail("500", times=3)
        await client.prefetch(ids)
        assert double.count("500") == 3 and double.count("200") == 50


async def test_connection_refused_is_waited_out_with_one_warning_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    async with RegistryDouble() as double:
        schema_id = double.add(SCHEMA)
        await double.go_down()

        async def back_after_60s(_: int) -> None:
            if time.now >= 60:
                await double.come_back()

        time = FakeTime(back_after_60s)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with client_for(double.url, time, warn_interval_s=5.0) as client:
                await client.prefetch([schema_id])
                assert client.schema_by_id(schema_id) == SCHEMA
        lines = [r for r in caplog.records if r.name == LOGGER]
        assert len(time.sleeps) >= 40  # about 40 attempts in 60 s (1.6 s apart at most)
        unavailable = [r for r in lines if "unavailable" in r.getMessage()]
        assert 10 <= len(unavailable) <= 60 / 5 + 1  # one line per 5 s, not one per attempt
        assert "ClientConnectorError" in unavailable[0].getMessage()
        assert [r for r in lines if "answers again" in r.getMessage()]
        assert len(lines) == len(unavailable) + 1


async def test_give_up_after_s_raises_a_retriable_error() -> None:
    time = FakeTime()
    async with RegistryDouble() as double:
        await double.go_down()
        async with client_for(double.url, time, give_up_after_s=10.0) as client:
            with pytest.raises(SchemaRegistryError) as info:
                await client.register("s", SCHEMA)
        assert info.value.retriable and "unavailable for 1" in str(info.value)
        assert 10.0 <= time.now <= 12.0


async def test_basic_auth_and_the_password_is_never_shown(
        caplog: pytest.LogCaptureFixture) -> None:
    async with RegistryDouble(username="ci", password=PASSWORD) as double:
        schema_id = double.add(SCHEMA)
        with caplog.at_level(logging.DEBUG):
            async with client_for(double.url, username="ci", password=PASSWORD) as client:
                double.fail("500", times=1)
                await client.prefetch([schema_id])
                assert client.schema_by_id(schema_id) == SCHEMA
                shown = repr(client) + repr(client.settings)
            async with client_for(double.url) as anonymous:
                with pytest.raises(SchemaRegistryError) as info:
                    await anonymous.prefetch([schema_id])
        expected = "Basic " + base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
        assert double.seen[-2].authorization == expected
        assert double.seen[-1].outcome == "401" and double.seen[-1].authorization is None
        assert not info.value.retriable and info.value.status == 401  # not retried:
        assert double.count("401") == 1
        assert "credentials" in str(info.value)
        assert PASSWORD not in shown + caplog.text + str(info.value)


async def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "registry-password"
    secret.write_text(PASSWORD + "\n")
    async with RegistryDouble(username="ci", password=PASSWORD) as double, client_for(
            double.url, username="ci", password_file=str(secret)) as client:
        await client.prefetch([double.add(SCHEMA)])
        assert double.count("200") == 1
    with pytest.raises(ConfigError) as info:
        client_for("http://127.0.0.1:1", username="ci", password_file=str(tmp_path / "no"))
    assert info.value.field == "registry.password_file"


async def test_register_uses_the_confluent_api_and_is_idempotent() -> None:
    async with RegistryDouble() as double, client_for(double.url) as client:
        schema_id = await client.register("riverbed.events-value", SCHEMA)
        assert await client.register("riverbed.events-value", SCHEMA) == schema_id
        assert double.count(method="POST") == 1
        post = double.seen[0]
        assert post.path == "/subjects/riverbed.events-value/versions"
        assert post.content_type == CONTENT_TYPE
        codec = ConfluentCodec(client, SCHEMA, "riverbed.events-value")
        assert codec.encode(EVENT) == framed(schema_id)
        assert double.schemas[schema_id]  # the double holds what was registered


async def test_refusals_are_not_retried() -> None:
    async with RegistryDouble() as double:
        async with client_for(double.url + "/not-the-api") as client:
            with pytest.raises(SchemaRegistryError) as wrong_root:
                await client.prefetch([1])
        double.incompatible_subjects.add("s")
        async with client_for(double.url) as client:
            with pytest.raises(SchemaRegistryError) as refused:
                await client.register("s", SCHEMA)
    assert not wrong_root.value.retriable and "API root" in str(wrong_root.value)
    assert not refused.value.retriable and refused.value.status == 409
    assert "incompatible" in str(refused.value)
    assert [s.outcome for s in double.seen] == ["404", "409"]


async def test_tls_trust_hostname_check_and_client_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    async with RegistryDouble(tls=certs.server_context()) as double:
        schema_id = double.add(SCHEMA)
        localhost = f"https://localhost:{double.port}"
        async with client_for(localhost, ca_file=str(certs.ca)) as client:
            await client.prefetch([schema_id])  # trusted CA, right name
        async with client_for(localhost) as client:  # the system's CAs do not know ours
            with pytest.raises(SchemaRegistryError) as untrusted:
                await client.prefetch([schema_id])
        async with client_for(double.url, ca_file=str(certs.ca)) as client:  # 127.0.0.1
            with pytest.raises(SchemaRegistryError) as misnamed:
                await client.prefetch([schema_id])
        async with client_for(double.url, ca_file=str(certs.ca),
                              check_hostname=False) as client:
            await client.prefetch([schema_id])
        assert double.count("200") == 2
    for error in (untrusted.value, misnamed.value):
        assert not error.retriable and "TLS" in str(error)
    async with RegistryDouble(tls=certs.server_context(require_client_cert=True)) as double:
        async with client_for(f"https://localhost:{double.port}", ca_file=str(certs.ca),
                              cert_file=str(certs.client_cert),
                              key_file=str(certs.client_key)) as client:
            await client.prefetch([double.add(SCHEMA)])
        assert double.count("200") == 1


def test_tls_settings_build_an_ssl_context(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    base = RegistrySettings(url="https://registry:8081", ca_file=str(certs.ca))
    context = ssl_context(base)
    assert context is not None and context.check_hostname
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert len(context.get_ca_certs()) == 1  # ours only, not the system's
    relaxed = ssl_context(dataclasses.replace(base, check_hostname=False))
    assert relaxed is not None and not relaxed.check_hostname
    assert relaxed.verify_mode.name == "CERT_REQUIRED"  # the chain is still verified
    assert ssl_context(RegistrySettings(url="http://registry:8081")) is None
    for field, settings in (
            ("registry.ca_file", dataclasses.replace(base, ca_file=str(tmp_path / "none"))),
            ("registry.cert_file", dataclasses.replace(base, cert_file=str(certs.ca)))):
        with pytest.raises(ConfigError) as info:
            ssl_context(settings)
        assert info.value.field == field


class _Record:
    def __init__(self, topic: str, value: bytes | None) -> None:
        self.topic, self.value = topic, value


async def test_the_batch_prefetch_registers_encoders_once_and_reads_each_topics_ids() -> None:
    async with RegistryDouble() as double, client_for(double.url) as client:
        label = load_schema("label")
        events = ConfluentCodec(client, SCHEMA, "events-value")
        labels = ConfluentCodec(client, label, "labels-value")
        out = ConfluentCodec(client, load_schema("prediction"), "predictions-value")
        prefetch = SchemaPrefetch(client, {"events": events, "labels": labels,
                                           "plain": AvroCodec(SCHEMA)}, [out, AvroCodec(SCHEMA)])
        event_id, label_id = double.add(SCHEMA), double.add(label)
        records = [_Record("events", framed(event_id)), _Record("labels", framed(label_id)),
                   _Record("events", None), _Record("plain", framed(99)),
                   _Record("events", framed(42))]
        await prefetch(records)
        await prefetch(records)
        gets = sorted(s.path for s in double.seen if s.method == "GET")
        assert gets == [f"/schemas/ids/{i}" for i in sorted((event_id, label_id, 42))]
        assert double.count(method="POST") == 1  # the prediction schema, registered once
        assert events.decode(framed(event_id)) == EVENT
        with pytest.raises(DecodeError) as info:
            events.decode(framed(42))
        assert info.value.reason == "unknown_schema_id"
        prediction = {"event_id": "e", "key": "k", "model": "m", "model_seq": 0, "lineage": 0,
                      "prediction": 1.0, "probabilities": {}, "event_time": 0,
                      "prediction_time": 0}
        assert out.encode(prediction)[:5] == b"\x00" + struct.pack(
            ">I", client.id_of("predictions-value", load_schema("prediction")))
