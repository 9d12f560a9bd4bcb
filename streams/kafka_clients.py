"""Kafka clients built in one place, and the one partition reader every reader uses.

:func:`client_options` holds what every consumer, producer and admin client riverbed
makes shares: where the brokers are and how to connect to them (TLS, SASL: see
``streams/security.py``; ``streams/probe.py`` connects exactly as these clients will).
:class:`PartitionReader` is the only way riverbed reads topics outside its consumer
groups (the history, the snapshot index, the pending log, ``tail``, ``top``, the demo's
scoreboard, the tests): partitions are *assigned*, not subscribed, so reading joins no
group, commits nothing and never disturbs a deployment. Public aiokafka API only.

Delivery guarantee: every record of the assigned partitions from the start position, in
offset order per partition, except a record the client cannot parse: stepped over and
reported (``streams/unreadable.py``). "The end" is the high-water mark a fetch response reported
(:meth:`PartitionReader.caught_up`), never ``end_offsets``, which the embedded broker
under-reports when one batch holds several records.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from riverbed.streams.config import BrokerSettings
from riverbed.streams.deadletter import UnreadableRecord
from riverbed.streams.security import aiokafka_security
from riverbed.streams.unreadable import fetch_readable

#: A consumed record: key and value are raw bytes (riverbed decodes them itself).
Record: TypeAlias = ConsumerRecord[bytes, bytes]


def client_options(broker: BrokerSettings) -> dict[str, Any]:
    """Connection options shared by every Kafka client riverbed makes (aiokafka keywords):
    the bootstrap servers, the security protocol, the TLS context and SASL credentials.
    ConfigError (naming the setting) if a certificate, key or password file is unusable."""
    return {"bootstrap_servers": broker.bootstrap_servers, **aiokafka_security(broker)}


#: The fetch wait of readers that follow a topic as it grows (the replica and the learner
#: loops). A fetch returns as soon as records are there (Apache Kafka completes a waiting
#: fetch when records arrive; the embedded Tansu polls within the wait), so the wait costs
#: latency only when a topic is idle. It must not be short: Tansu returns nothing when it
#: cannot read within the wait, and under load (two cores, three workers polling every few
#: ms) a reader that fell behind then never catches up -- measured: 5 and 20 ms stalled after
#: three SIGKILLed learners, 50 ms read 6,349 records and 100 ms 17,134 in one fetch.
FOLLOW_WAIT_MS = 100


class PartitionReader:
    """Reads assigned partitions of one or more topics; see the module docstring.

    Use as ``async with PartitionReader(broker, partitions) as reader:`` and call
    :meth:`fetch` in a loop; :meth:`caught_up` tells when every partition is read to the
    high-water mark seen so far. With ``partitions`` None, :meth:`assign_topic` chooses
    them once the reader has started (every partition of a topic).
    """

    def __init__(
        self, broker: BrokerSettings, partitions: Iterable[TopicPartition] = (), *,
        start: Mapping[TopicPartition, int] | Literal["beginning", "end"] = "beginning",
        fetch_max_wait_ms: int = 100, max_partition_fetch_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.partitions = list(partitions)
        #: the records stepped over because the client could not parse them
        self.unreadable: list[UnreadableRecord] = []
        self._broker = broker
        self._start = start
        self._consumer = AIOKafkaConsumer(
            **client_options(broker), group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            # committed records only: an aborted transaction (exactly-once) is invisible
            isolation_level="read_committed")

    async def __aenter__(self) -> PartitionReader:
        await self._consumer.start()
        try:
            if self.partitions:
                await self._assign(self.partitions)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._consumer.stop()

    async def assign_topic(self, topic: str) -> list[TopicPartition]:
        """Read every partition of ``topic`` (empty if the topic does not exist)."""
        # the consumer's public topics() keeps only names (partitions_for_topic() stays None
        # on Apache Kafka); the admin client's answers have them. list_topics() first: a
        # metadata request that names a missing topic makes the embedded broker create it
        admin = AIOKafkaAdminClient(**client_options(self._broker))
        await admin.start()
        try:
            exists = topic in await admin.list_topics()
            described = await admin.describe_topics([topic]) if exists else []
        finally:
            await admin.close()
        numbers = [p["partition"] for d in described if d["topic"] == topic
                   for p in d["partitions"]]
        await self._assign([TopicPartition(topic, p) for p in sorted(numbers)])
        return self.partitions

    async def _assign(self, partitions: list[TopicPartition]) -> None:
        self.partitions = partitions
        self._consumer.assign(partitions)
        if not partitions:  # aiokafka refuses to seek nothing
            return
        if self._start == "beginning":
            await self._consumer.seek_to_beginning(*partitions)
        elif self._start == "end":
            await self._consumer.seek_to_end(*partitions)
        else:
            for tp in partitions:
                self._consumer.seek(tp, self._start.get(tp, 0))

    async def fetch(self, timeout_ms: int = 200) -> dict[TopicPartition, list[Record]]:
        """Whatever arrives within ``timeout_ms`` (empty dict: nothing). A record the client
        cannot parse is stepped over, logged and kept in :attr:`unreadable`
        (``streams/unreadable.py``)."""
        fetched, unreadable = await fetch_readable(self._consumer, timeout_ms)
        self.unreadable.extend(unreadable)
        return fetched

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record :meth:`fetch` returns for ``tp``."""
        return await self._consumer.position(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The high-water mark of ``tp`` from the last fetch response (None: none yet)."""
        return self._consumer.highwater(tp)

    def fetched_since(self, time_ms: int) -> bool:
        """True when every partition had a fetch response at or after ``time_ms`` (epoch
        ms). The consumer keeps fetching in the background, but not for a partition whose
        fetched records wait to be read, and not at all while any do: a reader that stays
        open between reads can hold a stale high-water mark, and :meth:`caught_up` alone
        would then stop short of records appended since (``streams/history_feed.py``)."""
        for tp in self.partitions:
            polled = self._consumer.last_poll_timestamp(tp)
            if polled is None or polled < time_ms:
                return False
        return True

    async def caught_up(self) -> bool:
        """True when every partition's position reached the end the last fetch response
        reported: the last stable offset (records after it belong to a transaction still
        open), else the high-water mark. False while a partition has had no fetch response
        yet."""
        for tp in self.partitions:
            end = self._consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = self._consumer.highwater(tp)
            if end is None or await self._consumer.position(tp) < end:
                return False
        return True


async def read_to_end(broker: BrokerSettings, topic: str, start: int = 0,
                      until: int | None = None, idle_timeout_s: float = 30.0,
                      partition: int = 0) -> AsyncIterator[Record]:
    """Records of one partition from ``start`` to offset ``until`` (inclusive), else to the
    high-water mark. TimeoutError when nothing arrives for ``idle_timeout_s`` before then."""
    tp = TopicPartition(topic, partition)
    async with PartitionReader(broker, [tp], start={tp: start}, fetch_max_wait_ms=50
                               ) as reader:
        deadline = time.monotonic() + idle_timeout_s
        while True:
            fetched = await reader.fetch(200)
            for record in fetched.get(tp, []):
                if until is not None and record.offset > until:
                    return
                yield record
                if until is not None and record.offset == until:
                    return
            if fetched:
                deadline = time.monotonic() + idle_timeout_s
            if until is None and await reader.caught_up():
                return
            if time.monotonic() > deadline:
                want = until if until is not None else reader.highwater(tp)
                raise TimeoutError(f"{topic}: no progress at offset "
                                   f"{await reader.position(tp)} (want {want})")
