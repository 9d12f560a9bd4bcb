"""Training records: labelled examples on their way from a prediction replica to the
model's single learner (``topics.training``). Pure: no Kafka, no I/O.

One record carries one micro-batch's labelled examples of one model: each example's
event id, features, label and the prediction the replica made before the label was
known, plus the input positions the batch covered (``topic:partition`` -> next offset),
so a record says where its examples came from. Records are keyed by the model name and
all of a model's records go to one partition (:func:`training_partition`), so one
partition holds one model's examples in order and its owner can learn them alone.

JSON, not Avro: the examples' feature names vary per model and per event, and Python's
``json`` round-trips a float64 exactly (shortest repr), so the learner learns the very
values the replica extracted, and every replica re-applying its ``Learned`` records
reaches the learner's fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from riverbed.streams.errors import DecodeError
from riverbed.streams.history import Example, Examples

__all__ = ["TrainingBatch", "decode_training", "encode_training", "training_partition"]


@dataclasses.dataclass(frozen=True)
class TrainingBatch:
    """One model's labelled examples from one micro-batch of one worker."""

    model: str
    examples: Sequence[Example]
    #: input 'topic:partition' -> next offset after the batch (where they came from)
    sources: Mapping[str, int]
    #: what the replica predicted for each example before its label was known
    predictions: tuple[Any, ...] = ()


def training_partition(model: str, partitions: int) -> int:
    """The training partition of ``model``'s examples: stable across processes and
    versions (CRC-32 of the name), so every replica sends a model's examples to one
    partition and its owner is that model's learner.

    >>> training_partition("agrawal-lr", 4) == training_partition("agrawal-lr", 4)
    True
    """
    return zlib.crc32(model.encode()) % partitions


def encode_training(batch: TrainingBatch) -> bytes:
    """The record value of ``batch``.

    >>> b = TrainingBatch("m", (Example("e1", {"a": 0.1}, True),), {"events:0": 7}, (False,))
    >>> decode_training(encode_training(b)) == b
    True
    """
    examples = Examples.of(batch.examples)
    return json.dumps({
        "model": batch.model, "sources": dict(batch.sources),
        "ids": list(examples.ids), "x": list(examples.xs), "y": list(examples.ys),
        "predictions": list(batch.predictions),
    }, separators=(",", ":"), default=str).encode()


def decode_training(payload: bytes) -> TrainingBatch:
    """A training batch from a record value (DecodeError if it is not one)."""
    try:
        raw = json.loads(payload)
        ids, xs, ys = raw["ids"], raw["x"], raw["y"]
        if not (isinstance(raw["model"], str) and len(ids) == len(xs) == len(ys)):
            raise ValueError("model name or example columns malformed")
        examples = tuple(Example(str(i), {str(k): float(v) for k, v in x.items()}, y)
                         for i, x, y in zip(ids, xs, ys, strict=True))
        sources = {str(k): int(v) for k, v in raw["sources"].items()}
        return TrainingBatch(raw["model"], examples, sources, tuple(raw.get("predictions", ())))
    except Exception as exc:  # not ours, damaged: the learner skips and counts it
        raise DecodeError(f"not a training record: {type(exc).__name__}: {exc}") from exc
