"""What the broker offers, detected at start -- never assumed from its name.

Apache Kafka, Confluent and MSK hand out producer ids (the idempotent producer); the
embedded Tansu broker answers ``InitProducerId`` with an error. riverbed asks once, with
the same connection options as every other client (``streams/kafka_clients.py``), and
uses the idempotent producer for its outputs and history where the broker supports it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.transaction import InitProducerIdRequest

from riverbed.streams.config import BrokerSettings
from riverbed.streams.kafka_clients import client_options

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BrokerFeatures:
    """Capabilities of the cluster at ``bootstrap_servers``."""

    #: the broker hands out producer ids: ``enable_idempotence`` works
    idempotent_producer: bool
    #: why not, when it does not (one line, for the log)
    detail: str = ""


async def detect_features(broker: BrokerSettings, timeout_s: float = 20.0) -> BrokerFeatures:
    """Ask the cluster for a producer id (no record is written); its answer decides. A
    retriable answer (e.g. a fresh Kafka still loading its transaction log) is asked
    again until ``timeout_s``."""
    client = AIOKafkaClient(**client_options(broker), request_timeout_ms=10_000)
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    try:
        await client.bootstrap()
        while True:
            request = InitProducerIdRequest(transactional_id=None,  # type: ignore[arg-type]
                                            transaction_timeout_ms=60_000)
            response = await client.send(client.get_random_node(), request)
            if response.error_code == 0:
                return BrokerFeatures(True)
            error = for_code(response.error_code)
            if not error.retriable or time.monotonic() + delay > deadline:
                return BrokerFeatures(False, f"InitProducerId answered {error.__name__}")
            await asyncio.sleep(delay)  # backoff between two questions, not a synchronisation
            delay = min(delay * 2, 1.0)
    except KafkaError as exc:
        return BrokerFeatures(False, f"InitProducerId failed: {exc!r}")
    finally:
        await client.close()
