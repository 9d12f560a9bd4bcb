"""Records the Kafka client cannot parse: stepped over, never a consumer stuck for good.

Brokers keep a record header's name as bytes, and both Apache Kafka and the embedded
Tansu store one that is not UTF-8; aiokafka decodes every header name while it parses a
fetched batch and raises ``UnicodeDecodeError``. The error comes back on every fetch from
the same position, so one such record -- written by anyone who may write to a topic --
would stop each reader of that topic at its offset for good (events, labels, the history,
the pending log). Worse, records aiokafka had already drained from *other* partitions in
the failing call are lost: their positions moved on, the call returned nothing.

:func:`fetch_readable` is ``getmany`` that steps over such a record instead. It takes the
positions before each call; on the error it puts every partition back to its position
and reads them again one record at a time (at most ``max_records`` in all, readable or
not). A partition
whose next record cannot be parsed is moved one offset on, and the record comes back as
an :class:`~riverbed.streams.deadletter.UnreadableRecord` at that offset: records are
parsed in offset order, so no readable record lies between the position and the one that
failed (an offset that is not a record -- a transaction marker -- may, and then the next
call steps again). Its key and value are not available. Public aiokafka API only.

Delivery guarantee: every readable record exactly as ``getmany`` returns it, none lost;
every unreadable one reported once per read, in its partition's order.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from riverbed.streams.deadletter import UnreadableRecord

log = logging.getLogger(__name__)

#: what aiokafka raises while parsing a record it cannot represent
UNREADABLE_ERRORS = (UnicodeDecodeError,)
#: how long a partition is waited for, one record at a time, after such an error
PROBE_MS = 200


async def fetch_readable(consumer: AIOKafkaConsumer, timeout_ms: int,
                         max_records: int | None = None
                         ) -> tuple[dict[TopicPartition, list[Any]], list[UnreadableRecord]]:
    """``consumer.getmany(timeout_ms=, max_records=)`` and the records it stepped over."""
    positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
    try:
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records), []
    except UNREADABLE_ERRORS:
        return await _step_over(consumer, positions, max_records or 500)


async def _step_over(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int],
                     limit: int
                     ) -> tuple[dict[TopicPartition, list[Any]], list[UnreadableRecord]]:
    assigned = consumer.assignment()
    ours = sorted((tp for tp in positions if tp in assigned),
                  key=lambda tp: (tp.topic, tp.partition))
    for tp in ours:  # what the failed call drained and dropped comes again
        consumer.seek(tp, positions[tp])
    fetched: dict[TopicPartition, list[Any]] = {}
    unreadable: list[UnreadableRecord] = []
    total = 0
    for tp in ours:
        while total < limit and tp in consumer.assignment():  # (a rebalance may take it)
            at = await consumer.position(tp)
            try:
                got = (await consumer.getmany(tp, timeout_ms=PROBE_MS, max_records=1)
                       ).get(tp, [])
            except UNREADABLE_ERRORS as exc:
                consumer.seek(tp, at + 1)
                reason = (f"the Kafka client cannot parse this record ({type(exc).__name__}: "
                          f"{exc}; a header name that is not UTF-8?)")
                unreadable.append(UnreadableRecord(tp.topic, tp.partition, at, reason))
                log.warning("%s:%d: skipped offset %d: %s", tp.topic, tp.partition, at, reason)
                total += 1
                continue  # the next ones may be unreadable too: a run costs one call
            if not got:
                break
            fetched.setdefault(tp, []).extend(got)
            total += len(got)
    return fetched, unreadable
