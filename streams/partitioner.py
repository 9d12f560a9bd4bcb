"""Kafka's default key partitioner (murmur2), as Java and aiokafka clients compute it."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a keyed record goes to under the default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
