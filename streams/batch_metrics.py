"""Accuracy and LogLoss updated a batch at a time, with River's exact arithmetic.

River's metric objects go through generic machinery on every update (a confusion matrix,
a ``Mean`` object, property lookups); in the worker, scoring cost ~2.9 us per learned
event (bench: the processor with the monitor replaced by a no-op). These two keep River's
definitions and perform River's floating-point operations in the same order, so their
values are identical (``tests/unit/test_batch_metrics.py``), but update from whole lists
once per batch. Every other River metric is still updated one example at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from operator import eq
from typing import Any

_LOW, _HIGH = 1e-15, 1 - 1e-15  # River's Metric._clamp_proba bounds


def p_true(proba: Mapping[Any, float]) -> float | None:
    """What LogLoss reads of class probabilities: P(True) (0.0 if absent), None if empty."""
    return proba.get(True, 0.0) if proba else None


class BatchAccuracy:
    """River's ``metrics.Accuracy``: exact matches / scored examples."""

    requires_labels = True

    def __init__(self) -> None:
        self.total = 0
        self.correct = 0

    def update_many(self, ys: Sequence[Any], predictions: Sequence[Any]) -> None:
        """Score pairs (no ``None`` predictions: the monitor leaves those out)."""
        self.total += len(ys)
        self.correct += sum(map(eq, ys, predictions))

    def get(self) -> float:
        return self.correct / self.total if self.total else 0.0


class BatchLogLoss:
    """River's ``metrics.LogLoss``: running mean of the binary log loss of P(True)."""

    requires_labels = False

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = 0.0

    def update_many(self, ys: Sequence[Any], probas: Sequence[Mapping[Any, float]]) -> None:
        """Score (label, class probabilities) pairs; empty probabilities are skipped."""
        self.update_many_p_true(ys, [p_true(proba) for proba in probas])

    def update_many_p_true(self, ys: Sequence[Any], p_trues: Sequence[float | None]) -> None:
        """Score (label, P(True)) pairs (:func:`p_true`); None (no prediction) is skipped."""
        n, mean, log = self.n, self.mean, math.log
        for y, p_y in zip(ys, p_trues, strict=True):
            if p_y is None:
                continue
            p = max(min(p_y, _HIGH), _LOW)
            loss = -log(p) if y else -log(1 - p)
            n += 1.0
            mean += (1.0 / n) * (loss - mean)  # river.stats.Mean.update with w=1
        self.n, self.mean = n, mean

    def get(self) -> float:
        return self.mean


#: metric names served by the batch implementations above
BATCH_METRICS: dict[str, type[BatchAccuracy | BatchLogLoss]] = {
    "Accuracy": BatchAccuracy, "LogLoss": BatchLogLoss}
