"""Topics are created with explicit partitions before anything touches them."""

from __future__ import annotations

import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from riverbed.streams.broker import LocalBroker
from riverbed.streams.config import Settings
from riverbed.streams.errors import TopicError
from riverbed.streams.kafka_broker import KafkaBroker
from riverbed.streams.produce import produce
from riverbed.streams.topics import TopicSpec, ensure_topics, riverbed_topics
from tests.helpers import running_worker, until

pytestmark = pytest.mark.integration


async def test_topics_get_their_partitions_and_mismatch_is_an_error(settings: Settings) -> None:
    servers = settings.broker
    specs = riverbed_topics(settings)
    assert sorted(await ensure_topics(servers, specs)) == sorted(s.name for s in specs)
    assert await ensure_topics(servers, specs) == []  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([s.name for s in specs])
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    assert counts == {s.name: s.partitions for s in specs}
    assert counts[settings.topics.history] == 1
    with pytest.raises(TopicError, match="partitions"):
        await ensure_topics(servers, [TopicSpec(settings.topics.events, 2)])


async def test_a_history_topic_that_deletes_records_is_reported_at_start(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The history is the source of truth: a pre-existing history topic with a finite
    retention or records capped at Kafka's default size, or a compacted pending log, is
    reported loudly when a worker starts."""
    t = settings.topics
    specs = [s for s in riverbed_topics(settings) if s.name not in (t.history, t.pending)]
    await ensure_topics(settings.broker, specs + [
        TopicSpec(t.history, 1, configs=(("retention.ms", "3600000"),
                                         ("max.message.bytes", "1048588"))),
        TopicSpec(t.pending, 1, configs=(("cleanup.policy", "compact"),))])
    caplog.set_level(logging.WARNING, logger="riverbed.agents.worker")
    async with running_worker(settings) as worker:
        warnings = list(worker.stats.retention_warnings)
        page = worker.stats.snapshot()
    assert any(t.history in w and "retention.ms=3600000" in w for w in warnings), warnings
    assert any(t.pending in w and "compacted" in w for w in warnings), warnings
    assert any(t.history in w and "max.message.bytes=1048588" in w for w in warnings)
    assert page["retention_warnings"] == warnings
    logged = [r.getMessage() for r in caplog.records if "HISTORY AT RISK" in r.getMessage()]
    assert len(logged) == len(warnings)  # (Kafka also names the compacted log's default
    # 7-day retention.ms; Tansu reports only the configs a topic was created with)


async def test_topics_riverbed_creates_keep_what_they_must(settings: Settings,
                                                           broker: LocalBroker) -> None:
    """Freshly provisioned topics raise no retention warning; the idempotent producer is
    used exactly where the broker hands out producer ids (Apache Kafka, not Tansu)."""
    async with running_worker(settings) as worker:
        assert worker.stats.retention_warnings == []
        assert worker.stats.idempotent_producer is isinstance(broker, KafkaBroker)
        assert worker.output.producer is not None
        report = await produce(settings, "agrawal", 300, seed=3)
        await until(lambda: worker.stats.events >= report.valid, 60)
