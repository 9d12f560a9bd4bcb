"""The active-worker lease of a worker group's global models, elected by Kafka's group protocol.

A global model (one model learning from every input partition) has exactly one writer.
Every worker of a group joins the consumer group ``<group_id>.lease`` on the one-topic
subscription ``topics.training``; the member assigned its partition 0 holds the lease and
is the *active* worker: it claims the models, consumes the inputs, learns and serves.
The others are *standbys*: they keep following the history and take the lease over when
the active worker leaves the group (stops: at once; dies: after the lease session timeout).

The assignor is sticky: a member that holds the lease keeps it across rebalances (a
standby joining or leaving never moves it); when nobody holds it, the member waiting the
longest gets it. If two members both claim to hold it (a paused zombie coming back), the
one that acquired it last keeps it -- the zombie was fenced by its epoch meanwhile anyway.

Delivery guarantee: at most one *lease holder* per group generation. Learning stays exactly
once because a new holder claims a newer epoch in the history (``agents/learner.py``):
records a late former holder still writes are ignored by every fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from riverbed.streams.config import Settings
from riverbed.streams.kafka_clients import client_options

log = logging.getLogger(__name__)


class LeaseAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Gives every partition of the lease topic to one member: the holder, else the member
    waiting longest. Each member's metadata says whether it holds the lease and since when
    (an instance per member: its state travels in the JoinGroup metadata)."""

    name = "riverbed-lease"
    version = 0

    def __init__(self) -> None:
        self.joined_ns = time.time_ns()
        self.holding_since_ns: int | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        data = {"joined": self.joined_ns, "holding_since": self.holding_since_ns}
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics),
                                              json.dumps(data).encode())

    def assign(self, cluster: Any,  # type: ignore[override]
               members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        chosen = choose_holder({m: _member_state(meta.user_data) for m, meta in members.items()})
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        partitions = [(t, sorted(cluster.partitions_for_topic(t) or {0})) for t in topics]
        return {member: ConsumerProtocolMemberAssignment(
            self.version, partitions if member == chosen else [], b"") for member in members}

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        return None


def _member_state(user_data: bytes | None) -> tuple[int | None, int]:
    """(holding since, joined) from a member's metadata; garbage reads as a newcomer."""
    try:
        data = json.loads(user_data or b"{}")
        since = data.get("holding_since")
        return (since if isinstance(since, int) else None,
                data["joined"] if isinstance(data.get("joined"), int) else 2**63)
    except (ValueError, AttributeError):
        return None, 2**63


def choose_holder(members: Mapping[str, tuple[int | None, int]]) -> str | None:
    """The member that gets the lease: the latest acquirer among members that hold it, else
    the one that joined first (ties by member id). Pure, for tests."""
    holders = [(since, member) for member, (since, _) in members.items() if since is not None]
    if holders:
        return max(holders)[1]
    waiting = sorted((joined, member) for member, (_, joined) in members.items())
    return waiting[0][1] if waiting else None


class Lease:
    """Membership of ``<group_id>.lease``; :attr:`acquired` is set while this worker holds
    the lease, :attr:`lost` once it held it and then lost it (the worker must stop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topics.training
        self.assignor = LeaseAssignor()
        self.acquired = asyncio.Event()
        self.lost = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._poll: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        return self.assignor.holding_since_ns is not None

    async def start(self) -> None:
        w = self.settings.worker
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings.broker),
            group_id=f"{w.group_id}.lease", enable_auto_commit=False,
            session_timeout_ms=w.lease_session_timeout_ms,
            heartbeat_interval_ms=min(w.heartbeat_interval_ms,
                                      w.lease_session_timeout_ms // 3),
            partition_assignment_strategy=(self.assignor,))
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_LeaseListener(self))
        self._poll = asyncio.create_task(self._keep_polling())

    async def _keep_polling(self) -> None:
        """Keep the membership alive (the group protocol runs in aiokafka's background
        task; polling keeps ``max_poll_interval`` from expiring). No record is used."""
        assert self._consumer is not None
        while True:
            with contextlib.suppress(Exception):  # broker trouble: the coordinator retries
                await self._consumer.getmany(timeout_ms=1000)
            await asyncio.sleep(0)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        if TopicPartition(self.topic, 0) in assigned:
            if not self.holding:
                self.assignor.holding_since_ns = time.time_ns()
                log.info("lease of group %s acquired", self.settings.worker.group_id)
            self.acquired.set()
        elif self.holding:
            self.assignor.holding_since_ns = None
            self.acquired.clear()
            self.lost.set()
            log.error("lease of group %s lost to another worker", self.settings.worker.group_id)

    async def stop(self) -> None:
        """Leave the group: a standby gets the lease at once (no session timeout)."""
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        if self._consumer is not None:
            await self._consumer.stop()


class _LeaseListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None  # eager rebalancing revokes before every assignment: judge on assign

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.lease._assigned(set(assigned))
