"""The types a micro-batch passes through: input records, the batch's outputs, and the
seams between the processor, the label join and a model's learner. Pure: no I/O.

Dependency direction: ``agents/inference.py`` (the processor) calls
``agents/labels.py`` (the label join); both use these types; neither calls back.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from riverbed.streams.deadletter import DeadLetter
from riverbed.streams.features import LabelRule
from riverbed.streams.history import Example, HistoryEvent, HistoryFold
from riverbed.streams.models import OnlineModel
from riverbed.streams.pending import Prediction
from riverbed.streams.training import TrainingBatch

__all__ = ["BatchLearner", "BatchOutput", "InputRecord", "LearningLane", "Prediction",
           "dead_letter"]


class InputRecord(Protocol):
    """What the processor needs of a consumed record (aiokafka's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class HistoryAppender(Protocol):
    """Appends history events, returning their offsets once acknowledged."""

    async def append(self, events: Sequence[HistoryEvent], via: Any = None) -> list[int]: ...


class BatchLearner(Protocol):
    """What the batch path asks of a model's learner (``agents/learner.py``): the fold that
    says what the history covers, the history records of a processed batch (the processor)
    and, once they are appended, their bookkeeping (the batch agent)."""

    fold: HistoryFold

    @property
    def history(self) -> HistoryAppender: ...
    skipped_replayed: int
    skipped_duplicates: int

    def should_skip(self, source: str, offset: int) -> bool: ...

    def record_batch(self, seq_before: int, examples: Sequence[Example],
                     offsets: Mapping[str, int]) -> list[HistoryEvent]: ...

    def annotate(self, seq: int, kind: str, note: str) -> HistoryEvent: ...

    def snapshot_due(self) -> bool: ...

    def snapshot_events(self) -> list[HistoryEvent]: ...

    async def publish_index(self, events: Sequence[HistoryEvent], offsets: Sequence[int],
                            via: Any = None) -> None: ...

    def mark_durable(self, events: Sequence[HistoryEvent]) -> None: ...


class LearningLane(Protocol):
    """What the label join asks of one model's view of the batch (the processor's lane)."""

    @property
    def model(self) -> OnlineModel: ...

    @property
    def label_rule(self) -> LabelRule: ...

    def already_learned(self, event_id: str) -> bool: ...

    def learn(self, event_id: str, x: dict[str, float], y: Any, prediction: Any,
              proba: dict[Any, float], delay_ms: int, timed: bool = False,
              extracted_now: bool = True) -> bool: ...


@dataclasses.dataclass
class BatchOutput:
    """What one batch produces: predictions by output partition, and dead letters."""

    predictions: dict[int, list[tuple[bytes | None, bytes]]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    events: int = 0
    labels: int = 0
    #: event -> prediction latencies (ms) of this batch
    latencies: list[int] = dataclasses.field(default_factory=list)
    #: (model, seq) where the drift detector fired
    drifts: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: encoded pending-store additions to persist before committing (agents/labels.py)
    pending: bytes | None = None
    #: the event ids of the entries in ``pending``
    pending_ids: list[str] = dataclasses.field(default_factory=list)
    predict_s: list[float] = dataclasses.field(default_factory=list)
    learn_s: list[float] = dataclasses.field(default_factory=list)
    #: History events to append after the outputs are acknowledged, per learner.
    history: list[tuple[BatchLearner, list[HistoryEvent]]] = dataclasses.field(
        default_factory=list)
    #: labelled examples of prediction replicas, for the models' learner (scale-out)
    training: list[TrainingBatch] = dataclasses.field(default_factory=list)
    #: input sources ('topic:partition') with records but no model serving them here
    unowned: set[str] = dataclasses.field(default_factory=set)

    @property
    def drifted_models(self) -> Collection[str]:
        """Names of the models whose drift detector fired in this batch."""
        return sorted({name for name, _ in self.drifts})


def dead_letter(record: InputRecord, reason: str, detail: str, model: str | None) -> DeadLetter:
    """A dead letter carrying ``record``'s original bytes and where it came from."""
    return DeadLetter(
        value=record.value, key=record.key, reason=reason, detail=detail,
        source_topic=record.topic, source_partition=record.partition,
        source_offset=record.offset, model=model,
    )
