"""Create every topic riverbed uses, with explicit partitions, before any client touches it.

The embedded broker auto-creates a 4-partition topic on *any* metadata request that
names it, so provisioning must come first and must not itself ask for metadata of a
topic before creating it. Existing topics are accepted when their partition count
matches and rejected with :class:`~streams.errors.TopicError` otherwise (a silent
mismatch would break co-partitioning of events, labels and predictions).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from riverbed.streams.config import BrokerSettings, Settings
from riverbed.streams.errors import ConfigError, TopicError
from riverbed.streams.kafka_clients import client_options


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """A topic to provision."""

    name: str
    partitions: int
    replication_factor: int = 1
    configs: tuple[tuple[str, str], ...] = ()


#: the history is the source of truth: never deleted, never compacted
KEEP_FOREVER = (("retention.ms", "-1"), ("cleanup.policy", "delete"))
#: the snapshot index: one entry per (model, epoch, kind) key matters (streams/history_log.py)
COMPACTED = (("cleanup.policy", "compact"),)


def riverbed_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic a riverbed deployment with ``settings`` uses."""
    t = settings.topics
    data = [(t.events, t.partitions, ()), (t.predictions, t.partitions, ()),
            (t.labels, t.partitions, ()), (t.dead_letters, 1, ()),
            (t.training, t.partitions, ()), (t.history, 1, KEEP_FOREVER),
            (t.snapshots, 1, COMPACTED), (t.metrics, 1, ()), (t.pending, 1, KEEP_FOREVER)]
    if settings.worker.scale_out == "replicas":  # a cache: the history is the record
        data.append((t.replica_state, 1, (("retention.ms", "3600000"),)))
    isr = (("min.insync.replicas", str(t.min_insync_replicas)),)
    large = (("max.message.bytes", str(t.max_record_bytes)),)
    # the topics that take one record per batch, holding the batch's features
    batch_records = (t.history, t.pending, t.training, t.replica_state)
    return [TopicSpec(n, p, t.replication_factor,
                      c + isr + (large if n in batch_records else ()))
            for n, p, c in data]


def batch_record_bytes(settings: Settings, widest: Sequence[tuple[int, int, int]]) -> int:
    """An upper estimate of the largest record one batch makes, given each model's widest
    event (``FeatureExtractor.widest``): the pending log's record holds every model's
    features of every unlabelled event (base64 in JSON: 11 bytes a feature), its id and
    each model's probabilities (~32 bytes a class); a history record one model's features
    (8 bytes a feature)."""
    lim = settings.limits
    per_event = sum(most * 11 + classes * 32 + 128 for _, most, classes in widest)
    return lim.max_batch_records * (per_event + lim.max_event_id_length * 6) + 64 * 1024


def check_record_size(settings: Settings, widest: Sequence[tuple[int, int, int]]
                      ) -> str | None:
    """ConfigError if a full batch of labelled events certainly makes a history record
    above ``topics.max_record_bytes`` (8 bytes per feature every event has, per example):
    the broker would refuse it (``MessageSizeTooLarge``) and the worker stop on every start.
    A warning (returned) if only the upper estimate of :func:`batch_record_bytes` does --
    with long ids, map features or many classes a record may exceed it. None otherwise, and
    when the worker writes no batch records (no history, no labels, no replicas)."""
    t, lim = settings.topics, settings.limits
    if not (settings.history.enabled or settings.labels.enabled
            or settings.worker.scale_out == "replicas"):
        return None
    fix = ("lower limits.max_batch_records, or raise topics.max_record_bytes (and the "
           "topics' max.message.bytes)")
    certain = lim.max_batch_records * max((every * 8 for every, _, _ in widest), default=0)
    if settings.history.enabled and certain > t.max_record_bytes:
        features = max(every for every, _, _ in widest)
        raise ConfigError("limits.max_batch_records", (
            f"a batch of {lim.max_batch_records:,} labelled events with {features} features "
            f"makes a history record of {certain / 2**20:.1f} MiB, above "
            f"topics.max_record_bytes ({t.max_record_bytes / 2**20:.1f} MiB): {fix}"))
    bound = batch_record_bytes(settings, widest)
    if bound > t.max_record_bytes:
        return (f"a batch of {lim.max_batch_records:,} events may make records of up to "
                f"~{bound / 2**20:.1f} MiB (long ids, map features, many classes), above "
                f"topics.max_record_bytes ({t.max_record_bytes / 2**20:.1f} MiB); the "
                f"broker refuses a larger one and the worker stops: {fix}")
    return None


async def retention_warnings(broker: BrokerSettings, settings: Settings) -> list[str]:
    """What is wrong with the retention of topics that must keep everything (the history,
    the pending log): finite ``retention.ms``/``retention.bytes`` or compaction would
    delete the record of what was learned; and a ``max.message.bytes`` below
    ``topics.max_record_bytes`` on a topic that takes batch records. One line per
    problem; an empty list if all is well. Checked on every start: the topics may predate
    riverbed or be changed later."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    t = settings.topics
    admin = AIOKafkaAdminClient(**client_options(broker), request_timeout_ms=10_000)
    await admin.start()
    try:
        # one request: the history and the pending log (kept forever), and the training
        # topic (batch records; the replica-state topic exists with replicas only)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name)
             for name in (t.history, t.pending, t.training)])
    finally:
        await admin.close()
    problems = []
    for response in responses:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            configs = {entry[0]: entry[1] for entry in entries}
            limit = configs.get("max.message.bytes")
            if limit is not None and limit.isdigit() and \
                    int(limit) < settings.topics.max_record_bytes:
                problems.append(f"topic {name} takes records up to max.message.bytes={limit}, "
                                "below topics.max_record_bytes "
                                f"({settings.topics.max_record_bytes}): a batch record above "
                                f"it stops the worker (set max.message.bytes="
                                f"{settings.topics.max_record_bytes})")
            if name == t.training:
                continue
            if configs.get("retention.ms") not in (None, "-1"):
                problems.append(f"topic {name} has retention.ms={configs['retention.ms']}: "
                                "records older than that are DELETED (set retention.ms=-1)")
            if configs.get("retention.bytes") not in (None, "-1"):
                problems.append(f"topic {name} has retention.bytes="
                                f"{configs['retention.bytes']}: old records are DELETED "
                                "(set retention.bytes=-1)")
            if "compact" in (configs.get("cleanup.policy") or ""):
                problems.append(f"topic {name} is compacted (cleanup.policy="
                                f"{configs['cleanup.policy']}): all but the newest record "
                                "per model are DELETED (set cleanup.policy=delete)")
    return problems


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
    deadline = time.monotonic() + 10.0
    while True:  # a topic created a moment ago may not be in every broker's metadata yet
        described = await admin.describe_topics([s.name for s in existing])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if all(counts.get(s.name) for s in existing) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)  # metadata propagates asynchronously: ask again
    for spec in existing:
        if counts.get(spec.name) != spec.partitions:
            raise TopicError(
                f"topic {spec.name} exists with {counts.get(spec.name)} partitions, "
                f"riverbed needs {spec.partitions}; delete it or change topics.partitions"
            )
