"""Batched producer for predictions and dead letters (``acks=all``).

:meth:`BatchProducer.publish` fills aiokafka record batches directly (one
``create_batch``/``send_batch`` per partition and ~1 MiB) instead of one ``send`` per
record, and returns futures that resolve when the broker has acknowledged. Callers
await them before marking input done: that is what makes outputs at-least-once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from mode import Service

from riverbed.streams.config import BrokerSettings
from riverbed.streams.deadletter import DeadLetter
from riverbed.streams.errors import TransactionsUnavailableError
from riverbed.streams.kafka_clients import client_options


class BatchProducer(Service):
    """One aiokafka producer shared by a worker's agents."""

    def __init__(self, broker: BrokerSettings, request_timeout_s: float = 40.0,
                 idempotent: bool = False, transactional_id: str | None = None,
                 max_record_bytes: int = 8 * 1024 * 1024, **kwargs: Any) -> None:
        self.broker = broker
        #: the largest record it may send (``topics.max_record_bytes``)
        self.max_record_bytes = max_record_bytes
        #: use the idempotent producer (a retried send is never written twice, and per
        #: partition order survives retries); only where the broker offers it
        #: (``streams/broker_features.py``)
        self.idempotent = idempotent
        #: with an id, every send belongs to a Kafka transaction (exactly-once outputs);
        #: starting the producer fences any older producer with the same id
        self.transactional_id = transactional_id
        #: how long a send may wait for its ack, retries included (a worker sets this past
        #: ``broker.reconnect_timeout_s`` so outputs survive a broker outage)
        self.request_timeout_s = request_timeout_s
        self.producer: AIOKafkaProducer | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self.producer = AIOKafkaProducer(
            **client_options(self.broker),
            acks="all",
            linger_ms=2,
            max_batch_size=1024 * 1024,
            max_request_size=self.max_record_bytes + 64 * 1024,  # + the request's framing
            request_timeout_ms=int(self.request_timeout_s * 1000),
            enable_idempotence=self.idempotent or self.transactional_id is not None,
            transactional_id=self.transactional_id,
        )
        await self.producer.start()

    async def check_transactions(self, timeout_s: float = 20.0) -> None:
        """Run one empty transaction: TransactionsUnavailableError (one line) if the broker
        cannot (the embedded broker answers InitProducerId with an error). Starting a
        transactional producer also fences (aborts) any older one with the same id."""
        assert self.transactional_id is not None
        try:
            if self.producer is None:
                await self.start()
            assert self.producer is not None
            async with asyncio.timeout(timeout_s):
                await self.producer.begin_transaction()
            async with asyncio.timeout(timeout_s):
                await self.producer.commit_transaction()
        except (KafkaError, TimeoutError) as exc:
            raise TransactionsUnavailableError(self.broker.bootstrap_servers,
                                               f"refused one ({exc!r})") from None

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.flush()
            await self.producer.stop()

    async def publish(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Send ``(key, value)`` records to one partition; futures of the acks."""
        assert self.producer is not None, "producer not started"
        futures: list[asyncio.Future[Any]] = []
        try:
            return await self._publish(topic, partition, records, futures)
        except BaseException:
            for future in futures:  # the caller never sees them: retrieve their outcome
                future.add_done_callback(retrieve)
            raise

    async def _publish(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]],
        futures: list[asyncio.Future[Any]],
    ) -> list[asyncio.Future[Any]]:
        assert self.producer is not None, "producer not started"
        batch = self.producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            batch.close()
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures

    async def publish_dead_letters(
        self, topic: str, dead_letters: Iterable[DeadLetter]
    ) -> list[asyncio.Future[Any]]:
        """Send dead letters (rare: one ``send`` each, original bytes + headers). One with
        neither key nor value (a tombstone without a key, which other clients may write, or
        an unreadable record) goes with an empty value: a Kafka client sends one of them."""
        assert self.producer is not None, "producer not started"
        return [
            await self.producer.send(
                topic, value=b"" if d.value is None and d.key is None else d.value, key=d.key,
                headers=d.headers())
            for d in dead_letters
        ]


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s exception as seen (no "exception was never retrieved" log)."""
    if not future.cancelled():
        future.exception()
