"""Topics are created with explicit partitions before anything touches them."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from riverbed.streams.config import Settings
from riverbed.streams.errors import TopicError
from riverbed.streams.topics import TopicSpec, ensure_topics, riverbed_topics

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
