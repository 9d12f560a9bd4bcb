"""Progressive validation and drift detection per model (River metrics, ADWIN).

Every learn step is scored first: ``update(y, prediction made before learning)``. With
delayed labels the prediction is the one made when the event arrived, so the metric is
honest about delays. The error stream (0/1 for classifiers, absolute error for
regressors) feeds a River drift detector (ADWIN by default).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from typing import Any

from river import drift as river_drift
from river import metrics as river_metrics

from riverbed.streams.batch_metrics import (
    BATCH_METRICS,
    BatchAccuracy,
    BatchLogLoss,
    p_true,
)
from riverbed.streams.errors import ModelSpecError

#: ROCAUC is available (``metrics = ["Accuracy", "ROCAUC"]``) but not a default: River's
#: implementation costs ~5 us per update, more than the rest of the scoring together.
DEFAULT_METRICS = {"classification": ("Accuracy", "LogLoss"),
                   "regression": ("MAE", "RMSE")}


def build_metric(name: str) -> Any:
    """A River metric by class name, looked up explicitly inside ``river.metrics`` (for
    Accuracy and LogLoss: the batch implementation with River's arithmetic)."""
    cls = getattr(river_metrics, name, None)
    if not isinstance(cls, type) or not issubclass(cls, river_metrics.base.Metric):
        raise ModelSpecError(f"{name!r} is not a metric in river.metrics")
    batch = BATCH_METRICS.get(name)
    return batch() if batch is not None else cls()


class ModelMonitor:
    """Metrics, label delays and drift of one model."""

    def __init__(self, task: str, metric_names: tuple[str, ...] | None = None,
                 detector: str = "ADWIN", delay_window: int = 10_000) -> None:
        self.task = task
        self.names = metric_names or DEFAULT_METRICS[task]
        self.metrics = {n: build_metric(n) for n in self.names}
        #: the same metrics over the current model version only (reset when the lineage
        #: changes, i.e. after a rollback): "how good is the version serving now?". They
        #: are the very objects of ``metrics`` until the lineage first changes (the two
        #: agree until then), so the common case scores each example once, not twice.
        self.version_metrics = self.metrics
        self.lineage: int | None = None
        self.scores_p_true = False
        self._scorers = self._make_scorers()
        detector_cls = getattr(river_drift, detector, None)
        if not isinstance(detector_cls, type):
            raise ModelSpecError(f"{detector!r} is not a drift detector in river.drift")
        self.detector = detector_cls()
        self.delays: deque[int] = deque(maxlen=delay_window)
        self.scored = 0
        self.drifts = 0

    def update(self, y: Any, prediction: Any, proba: dict[Any, float], delay_ms: int,
               lineage: int = 0) -> bool:
        """Score one labelled example; True if the drift detector fired."""
        return bool(self.update_many([y], [prediction], [proba], [delay_ms], lineage))

    def update_many(self, ys: Sequence[Any], predictions: Sequence[Any],
                    probas: Sequence[dict[Any, float]], delays_ms: Sequence[int],
                    lineage: int = 0) -> list[int]:
        """Score labelled examples in learn order (each with the prediction made before
        learning it); returns the positions at which the drift detector fired."""
        if lineage != self.lineage:
            self._new_version(lineage)
        return self._update(ys, predictions, list(map(p_true, probas))
                            if self.scores_p_true else probas, delays_ms)

    def update_many_p_true(self, ys: Sequence[Any], predictions: Sequence[Any],
                           p_trues: Sequence[float | None], delays_ms: Sequence[int],
                           lineage: int = 0) -> list[int]:
        """As :meth:`update_many`, given only what the metrics read of each example's
        class probabilities (:func:`~riverbed.streams.batch_metrics.p_true`): allowed
        while :attr:`scores_p_true`. A caller then keeps one float per example until it
        scores, not a dict of probabilities."""
        if lineage != self.lineage:
            self._new_version(lineage)
        if not self.scores_p_true:
            raise ValueError(f"metrics {list(self.names)} need every class probability")
        return self._update(ys, predictions, p_trues, delays_ms)

    def _update(self, ys: Sequence[Any], predictions: Sequence[Any], probas: Sequence[Any],
                delays_ms: Sequence[int]) -> list[int]:
        """Score; ``probas`` are P(True)s when :attr:`scores_p_true`, else dicts."""
        by_proba = self.task == "classification"
        predicted_ys, predicted = ys, predictions  # label-based metrics skip "no prediction"
        if None in predictions:
            kept = [i for i, p in enumerate(predictions) if p is not None]
            predicted_ys, predicted = [ys[i] for i in kept], [predictions[i] for i in kept]
        for metric, needs_label in self._scorers:
            if isinstance(metric, BatchAccuracy):
                metric.update_many(predicted_ys, predicted)
            elif isinstance(metric, BatchLogLoss):
                if self.scores_p_true:
                    metric.update_many_p_true(ys, probas)
                else:
                    metric.update_many(ys, probas)
            else:
                _update_one_by_one(metric, needs_label, by_proba, ys, predictions, probas)
        self.scored += len(ys)
        self.delays.extend(delays_ms)
        return self._detect(ys, predictions, by_proba)

    def _detect(self, ys: Sequence[Any], predictions: Sequence[Any], by_proba: bool
                ) -> list[int]:
        detector, fired = self.detector, []
        for i, (y, prediction) in enumerate(zip(ys, predictions, strict=True)):
            if by_proba:
                detector.update(0.0 if prediction == y else 1.0)
            else:
                detector.update(abs(float(y) - float(prediction or 0.0)))
            if detector.drift_detected:
                fired.append(i)
        self.drifts += len(fired)
        return fired

    def _new_version(self, lineage: int) -> None:
        if self.lineage is not None:  # a rollback: score the new version from scratch
            self.version_metrics = {n: build_metric(n) for n in self.names}
            self._scorers = self._make_scorers()
        self.lineage = lineage

    def _make_scorers(self) -> list[tuple[Any, bool]]:
        groups = [self.metrics] + ([self.version_metrics]
                                   if self.version_metrics is not self.metrics else [])
        scorers = [(m, bool(m.requires_labels)) for group in groups for m in group.values()]
        #: every metric reads at most P(True) of the class probabilities (Accuracy,
        #: LogLoss): :meth:`update_many_p_true` may be used
        self.scores_p_true = self.task == "classification" and all(
            isinstance(m, BatchAccuracy | BatchLogLoss) for m, _ in scorers)
        return scorers

    def values(self) -> dict[str, float]:
        """Current metric values (since the worker started)."""
        return {name: float(m.get()) for name, m in self.metrics.items()}

    def version_values(self) -> dict[str, float]:
        """Metric values over the current model version (lineage) only."""
        return {name: float(m.get()) for name, m in self.version_metrics.items()}

    def delay_quantiles(self) -> tuple[float, float]:
        """p50 and p99 label delay (ms) over the recent window."""
        if not self.delays:
            return 0.0, 0.0
        ordered = sorted(self.delays)

        def q(p: float) -> float:
            return float(ordered[min(len(ordered) - 1, bisect.bisect_left(
                range(len(ordered)), p * (len(ordered) - 1)))])
        return q(0.5), q(0.99)


def _update_one_by_one(metric: Any, needs_label: bool, by_proba: bool, ys: Sequence[Any],
                       predictions: Sequence[Any], probas: Sequence[dict[Any, float]]) -> None:
    for y, prediction, proba in zip(ys, predictions, probas, strict=True):
        if needs_label:
            if prediction is not None:
                metric.update(y, prediction)
        elif proba or not by_proba:
            metric.update(y, proba if by_proba else prediction)
