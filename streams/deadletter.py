"""Dead-letter records: the original bytes, untouched, plus metadata in headers.

Header names are ``riverbed.<field>`` of ``schemas/dead_letter.avsc``; values are UTF-8.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One event that must not reach a model, and why."""

    value: bytes | None
    key: bytes | None
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    model: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying the metadata."""
        fields = {
            "reason": self.reason,
            "detail": self.detail[:1000],
            "source_topic": self.source_topic,
            "source_partition": str(self.source_partition),
            "source_offset": str(self.source_offset),
            "time": str(int(time.time() * 1000)),
        }
        if self.model is not None:
            fields["model"] = self.model
        return [(f"riverbed.{k}", v.encode()) for k, v in fields.items()]


@dataclasses.dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A consumed record the Kafka client could not parse (``streams/unreadable.py``),
    standing where the record was: its topic, partition and offset and why. Its key and
    value never reached riverbed, so a dead letter of it carries neither."""

    topic: str
    partition: int
    offset: int
    #: what the client raised
    reason: str
    key: bytes | None = None
    value: bytes | None = None


def parse_headers(headers: object) -> dict[str, str]:
    """Header list of a consumed dead letter -> ``{field: value}`` without the prefix."""
    result: dict[str, str] = {}
    for name, value in headers or ():  # type: ignore[attr-defined]
        if name.startswith("riverbed."):
            result[name[len("riverbed.") :]] = value.decode(errors="replace") if value else ""
    return result
