"""Which input offsets may be committed: pure bookkeeping, no Kafka calls.

Batches are handed to the agent in fetch order and confirmed (``done``) in the same
order. A partition's commit position only ever moves forward, only to the position
after a confirmed batch, and never for a batch fetched before its partition was
revoked (the new owner re-processes it: at-least-once, never a gap).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    """Commit positions per partition, advanced by confirmed batches."""

    def __init__(self) -> None:
        self.generation = 0
        self._done: dict[P, int] = {}
        self._committed: dict[P, int] = {}

    def done(self, next_offsets: Mapping[P, int], generation: int) -> bool:
        """Record a confirmed batch; False (ignored) if fetched in an older generation."""
        if generation != self.generation:
            return False
        for partition, offset in next_offsets.items():
            if offset > self._done.get(partition, -1):
                self._done[partition] = offset
        return True

    def to_commit(self, only: Iterable[P] | None = None) -> dict[P, int]:
        """Positions confirmed but not yet committed (optionally for ``only``)."""
        wanted = None if only is None else set(only)
        return {p: o for p, o in self._done.items()
                if self._committed.get(p) != o and (wanted is None or p in wanted)}

    def committed(self, positions: Mapping[P, int]) -> None:
        """Record that ``positions`` were committed."""
        self._committed.update(positions)

    def revoke(self, partitions: Iterable[P]) -> None:
        """Forget ``partitions`` and start a new generation (in-flight batches are void)."""
        for partition in partitions:
            self._done.pop(partition, None)
            self._committed.pop(partition, None)
        self.generation += 1

    def position(self, partition: P) -> int | None:
        """The highest confirmed position of ``partition``."""
        return self._done.get(partition)
