"""Create every topic riverbed uses, with explicit partitions, before any client touches it.

The embedded broker auto-creates a 4-partition topic on *any* metadata request that
names it, so provisioning must come first and must not itself ask for metadata of a
topic before creating it. Existing topics are accepted when their partition count
matches and rejected with :class:`~streams.errors.TopicError` otherwise (a silent
mismatch would break co-partitioning of events, labels and predictions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from riverbed.streams.config import BrokerSettings, Settings
from riverbed.streams.errors import TopicError
from riverbed.streams.kafka_clients import client_options


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """A topic to provision."""

    name: str
    partitions: int
    replication_factor: int = 1
    configs: tuple[tuple[str, str], ...] = ()


def riverbed_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic a riverbed deployment with ``settings`` uses."""
    t = settings.topics
    keep_forever = (("retention.ms", "-1"), ("cleanup.policy", "delete"))
    data = [(t.events, t.partitions, ()), (t.predictions, t.partitions, ()),
            (t.labels, t.partitions, ()), (t.dead_letters, 1, ()),
            (t.training, t.partitions, ()), (t.history, 1, keep_forever),
            (t.snapshots, 1, keep_forever), (t.metrics, 1, ()), (t.pending, 1, keep_forever)]
    return [TopicSpec(n, p, t.replication_factor, c) for n, p, c in data]


async def ensure_topics(broker: BrokerSettings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create ``specs`` (idempotent); returns the names that were newly created."""
    specs = list(specs)
    admin = AIOKafkaAdminClient(**client_options(broker), request_timeout_ms=10_000)
    await admin.start()
    created: list[str] = []
    try:
        for spec in specs:
            topic = NewTopic(spec.name, spec.partitions, spec.replication_factor,
                             topic_configs=dict(spec.configs))
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                response = None
            if response is not None and _created(response, spec.name):
                created.append(spec.name)
        await _check_partitions(admin, [s for s in specs if s.name not in created])
    finally:
        await admin.close()
    return created


def _created(response: object, name: str) -> bool:
    for topic_name, error_code, *rest in getattr(response, "topic_errors", []):
        if topic_name == name:
            if error_code == 36:  # TOPIC_ALREADY_EXISTS
                return False
            if error_code != 0:
                message = rest[0] if rest else ""
                raise TopicError(f"cannot create {name}: error {error_code} {message}")
            return True
    return True


async def _check_partitions(admin: AIOKafkaAdminClient, existing: list[TopicSpec]) -> None:
    if not existing:
        return
    described = await admin.describe_topics([s.name for s in existing])
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    for spec in existing:
        if counts.get(spec.name) != spec.partitions:
            raise TopicError(
                f"topic {spec.name} exists with {counts.get(spec.name)} partitions, "
                f"riverbed needs {spec.partitions}; delete it or change topics.partitions"
            )
