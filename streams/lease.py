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

**Spread** (``worker.scale_out = "replicas"``): the lease is cut into one lease per
training partition that holds a global model's examples (``streams/training.py``), and
:func:`spread_partitions` deals them out -- the member holding a model's training partition
is that model's single learner. It is sticky (a held partition stays with its holder) and
balanced (shares differ by one at most: a member that joins takes over the
newest-acquired extras of the busiest). A move is safe at any moment: the
new holder claims a newer epoch, which fences the former one.
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
from riverbed.streams.unreadable import fetch_readable

log = logging.getLogger(__name__)


class LeaseAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Gives every partition of the lease topic to one member: the holder, else the member
    waiting longest -- or, with ``spread`` (the training partitions of the global models),
    deals those out with :func:`spread_partitions`. Each member's metadata says what it
    holds and since when (an instance per member: its state travels in the JoinGroup
    metadata)."""

    name = "riverbed-lease"
    version = 0

    def __init__(self, spread: Iterable[int] | None = None) -> None:
        self.joined_ns = time.time_ns()
        self.holding_since_ns: int | None = None
        #: the partitions dealt out one by one (None: all to one holder)
        self.spread = None if spread is None else sorted(set(spread))
        #: spread: partition -> when this member acquired it
        self.held: dict[int, int] = {}

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        data = {"joined": self.joined_ns, "holding_since": self.holding_since_ns,
                "held": {str(p): since for p, since in self.held.items()}}
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics),
                                              json.dumps(data).encode())

    def assign(self, cluster: Any,  # type: ignore[override]
               members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        if self.spread is not None:
            dealt = spread_partitions({m: _member_holdings(meta.user_data)
                                       for m, meta in members.items()}, self.spread)
            return {member: ConsumerProtocolMemberAssignment(
                self.version, [(t, dealt[member]) for t in topics], b"") for member in members}
        chosen = choose_holder({m: _member_state(meta.user_data) for m, meta in members.items()})
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


def _member_holdings(user_data: bytes | None) -> tuple[dict[int, int], int]:
    """(partition -> held since, joined) from a member's metadata; garbage reads as a
    newcomer holding nothing."""
    try:
        data = json.loads(user_data or b"{}")
        held = data.get("held") or {}
        joined = data.get("joined")
        return ({int(p): since for p, since in held.items() if isinstance(since, int)},
                joined if isinstance(joined, int) else 2**63)
    except (ValueError, AttributeError, TypeError):
        return {}, 2**63


def spread_partitions(members: Mapping[str, tuple[Mapping[int, int], int]],
                      partitions: Iterable[int]) -> dict[str, list[int]]:
    """Deal ``partitions`` out over ``members`` (member -> (held partition -> since,
    joined)): sticky -- a partition stays with the member that acquired it last among
    those claiming it -- and balanced -- every member ends with ``n // members`` or one
    more; a member over its share gives up first what another member claims too (one back
    from a freeze claims what it held before), then its newest acquisitions; each free
    partition goes to the member holding fewest (ties: joined first, then member id).
    Pure, for tests.

    >>> spread_partitions({"a": ({1: 5, 2: 6}, 0), "b": ({}, 1)}, [1, 2])
    {'a': [1], 'b': [2]}
    """
    wanted = sorted(set(partitions))
    dealt: dict[str, list[tuple[int, int]]] = {m: [] for m in members}  # (since, partition)
    if not members:
        return {}
    for partition in wanted:
        claims = [(held[partition], member) for member, (held, _) in members.items()
                  if partition in held]
        if claims:
            since, member = max(claims)
            dealt[member].append((since, partition))
    # balanced: every member ends with floor(n/m) or, for n mod m of them, one more; the
    # members holding most keep the larger shares (fewest moves)
    low, extra = divmod(len(wanted), len(members))
    free = [p for p in wanted if not any(p == q for held in dealt.values() for _, q in held)]
    claimants = {p: sum(p in held for held, _ in members.values()) for p in wanted}
    for rank, member in enumerate(sorted(dealt, key=lambda m: (-len(dealt[m]), m))):
        held = dealt[member]
        held.sort(key=lambda sp: (claimants[sp[1]] > 1, sp))  # popped first: contested, newest
        while len(held) > low + (rank < extra):
            free.append(held.pop()[1])
    joined = {member: j for member, (_, j) in members.items()}
    for partition in sorted(free):
        member = min(dealt, key=lambda m: (len(dealt[m]), joined[m], m))
        dealt[member].append((2**63, partition))
    return {member: sorted(p for _, p in held) for member, held in dealt.items()}


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
    the lease, :attr:`lost` once it held it and then lost it (the worker must stop).

    With ``spread`` (the training partitions of the global models), :attr:`held` is the
    set of those this worker holds now and :attr:`changed` is set after every assignment
    (the caller clears it, then reconciles what it learns with :attr:`held`)."""

    def __init__(self, settings: Settings, spread: Iterable[int] | None = None) -> None:
        self.settings = settings
        self.topic = settings.topics.training
        self.assignor = LeaseAssignor(spread)
        self.acquired = asyncio.Event()
        self.lost = asyncio.Event()
        self.held: frozenset[int] = frozenset()
        self.changed = asyncio.Event()
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
                await fetch_readable(self._consumer, 1000)  # steps over what cannot parse
            await asyncio.sleep(0)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        if self.assignor.spread is not None:
            now = time.time_ns()
            held = frozenset(tp.partition for tp in assigned if tp.topic == self.topic)
            self.assignor.held = {p: self.assignor.held.get(p, now) for p in held}
            if held != self.held:
                log.info("group %s: this worker holds training partitions %s",
                         self.settings.worker.group_id, sorted(held))
            self.held = held
            self.changed.set()
            return
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
