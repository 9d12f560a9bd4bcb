"""Worker counters, kept as plain integers on the hot path and exposed to Prometheus.

Agents add to :class:`WorkerStats` once per *batch*; a custom collector turns the
numbers into Prometheus families only when ``/metrics`` is scraped, so counting costs
nothing per event. Names follow Prometheus conventions (``riverbed_..._total``).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector


class Histogram:
    """Cumulative histogram kept as plain counts (observed per batch, exposed on scrape)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Count ``n`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.buckets, value)] += n
        self.total += value * n
        self.n += n

    def observe_many(self, values: list[float]) -> None:
        buckets, counts = self.buckets, self.counts
        for value in values:
            counts[bisect.bisect_left(buckets, value)] += 1
        self.total += sum(values)
        self.n += len(values)

    def family(self, name: str, doc: str, labels: list[str] | None = None,
               label_values: list[str] | None = None) -> Any:
        family = HistogramMetricFamily(name, doc, labels=labels or [])
        cumulative, running = [], 0
        for bound, count in zip([*self.buckets, float("inf")], self.counts):
            running += count
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
        family.add_metric(label_values or [], cumulative, sum_value=self.total)
        return family


#: One predict/learn call in this many is timed: two clock reads per call cost more
#: than a tenth of the platform's own per-event work.
TIMING_SAMPLE = 8
#: staleness samples a worker keeps per replicated model (for p50/p99)
REPLICA_LAG_SAMPLES = 2000

_FAST = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclasses.dataclass
class WorkerStats:
    """Running totals of one worker process (not shared between processes)."""

    started_at: float = dataclasses.field(default_factory=time.time)
    #: True once the worker has taken over its models and owns input partitions.
    ready: bool = False
    #: ``starting``, ``standby`` (another worker holds the global models' lease; this one
    #: follows the history, ready to take over) or ``active``; with scale_out "replicas":
    #: ``replica`` (predicts, follows the history) or ``learner`` (learns at least one
    #: global model: see ``learning``).
    role: str = "starting"
    #: scale_out "replicas": the global models this worker learns (holds the training
    #: partitions of); the others it serves as replicas
    learning: list[str] = dataclasses.field(default_factory=list)
    #: False while the broker cannot be reached (``riverbed_broker_connected``).
    broker_connected: bool = True
    #: what the broker offers, detected at start (streams/broker_features.py)
    idempotent_producer: bool = False
    #: problems with the retention of the history and pending topics (logged at start)
    retention_warnings: list[str] = dataclasses.field(default_factory=list)
    #: Snapshots refused by integrity checks and history records skipped (not decodable).
    rejected_snapshots: int = 0
    skipped_history_records: int = 0
    #: Input partition numbers this worker is assigned now.
    partitions: list[int] = dataclasses.field(default_factory=list)
    #: per input 'topic:partition': next offset fetched and the high-water mark
    #: at that fetch (lag = highwater - fetched); updated per fetched batch
    inputs: dict[str, dict[str, int | None]] = dataclasses.field(default_factory=dict)
    events: int = 0
    batches: int = 0
    predictions: Counter[str] = dataclasses.field(default_factory=Counter)
    learned: Counter[str] = dataclasses.field(default_factory=Counter)
    dead_letters: Counter[str] = dataclasses.field(default_factory=Counter)
    model_seq: dict[str, int] = dataclasses.field(default_factory=dict)
    drifts: Counter[str] = dataclasses.field(default_factory=Counter)
    event_to_prediction_seconds: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(_SLOW))
    predict_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(_FAST))
    learn_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(_FAST))
    #: prediction replicas (scale_out = "replicas"): per model, the learn steps and seconds
    #: the replica was behind at its last history fetch with Learned records, and the last
    #: REPLICA_LAG_SAMPLES such (steps, seconds) for percentiles
    replica_lag_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    replica_lag_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    replica_lag_samples: dict[str, deque[tuple[int, float]]] = dataclasses.field(
        default_factory=dict)
    #: replica states (replica_catch_up = "state") refused: not decodable, not signed with
    #: our key, or not vouched for by the history
    rejected_replica_states: int = 0

    def observe_replica_lag(self, model: str, steps: int, seconds: float) -> None:
        """A replica of ``model`` caught up ``steps`` learn steps ``seconds`` late."""
        self.replica_lag_steps[model] = steps
        self.replica_lag_seconds[model] = seconds
        self.replica_lag_samples.setdefault(
            model, deque(maxlen=REPLICA_LAG_SAMPLES)).append((steps, seconds))

    def replica_summary(self) -> dict[str, dict[str, float]]:
        """Per replicated model: last and p50/p99 staleness (steps, ms) of recent fetches."""
        summary = {}
        for model, samples in self.replica_lag_samples.items():
            steps = sorted(s for s, _ in samples)
            ms = sorted(1000 * t for _, t in samples)
            summary[model] = {
                "lag_steps": self.replica_lag_steps[model],
                "lag_seconds": round(self.replica_lag_seconds[model], 4),
                "p50_steps": _quantile(steps, 0.5), "p99_steps": _quantile(steps, 0.99),
                "p50_ms": round(_quantile(ms, 0.5), 2), "p99_ms": round(_quantile(ms, 0.99), 2),
                "samples": len(samples)}
        return summary

    def observe_latencies(self, latencies_ms: list[int]) -> None:
        """Add a batch of event -> prediction latencies (ms) to the histogram."""
        histogram = self.event_to_prediction_seconds
        for ms, n in Counter(latencies_ms).items():  # few distinct values per batch
            histogram.observe(ms / 1000, n)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (served at ``/riverbed/stats``)."""
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "ready": self.ready,
            "role": self.role,
            "learning": list(self.learning),
            "broker_connected": self.broker_connected,
            "idempotent_producer": self.idempotent_producer,
            "retention_warnings": list(self.retention_warnings),
            "rejected_snapshots": self.rejected_snapshots,
            "skipped_history_records": self.skipped_history_records,
            "partitions": list(self.partitions),
            "inputs": {source: dict(seen) for source, seen in self.inputs.items()},
            "events": self.events,
            "batches": self.batches,
            "predictions": dict(self.predictions),
            "learned": dict(self.learned),
            "dead_letters": dict(self.dead_letters),
            "model_seq": dict(self.model_seq),
            "drifts": dict(self.drifts),
            "replicas": self.replica_summary(),
            "rejected_replica_states": self.rejected_replica_states,
        }


def _quantile(ordered: list[float] | list[int], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank; 0 for none)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


class StatsCollector(Collector):
    """Prometheus view of a :class:`WorkerStats`, computed at scrape time."""

    def __init__(self, stats: WorkerStats, extra: list[Any] | None = None) -> None:
        self.stats = stats
        self.extra = extra or []

    def collect(self) -> Iterator[Any]:
        s = self.stats
        events = CounterMetricFamily("riverbed_events", "Events consumed", labels=[])
        events.add_metric([], s.events)
        yield events
        yield _labelled(CounterMetricFamily, "riverbed_predictions", "Predictions published",
                        "model", s.predictions)
        yield _labelled(CounterMetricFamily, "riverbed_learn_steps", "Learn steps applied",
                        "model", s.learned)
        yield _labelled(CounterMetricFamily, "riverbed_dead_letters",
                        "Events sent to the dead-letter topic", "reason", s.dead_letters)
        yield _labelled(GaugeMetricFamily, "riverbed_model_seq", "Learn steps of the live model",
                        "model", s.model_seq)
        yield _labelled(CounterMetricFamily, "riverbed_drift_events", "Drift detections",
                        "model", s.drifts)
        if s.role in ("learner", "replica"):  # scale_out "replicas": who learns which model
            yield _labelled(GaugeMetricFamily, "riverbed_learner", "1 if this worker is the "
                            "model's learner, 0 if it serves the model as a replica", "model",
                            {name: int(name in s.learning) for name in s.model_seq})
        yield _labelled(GaugeMetricFamily, "riverbed_replica_lag_steps", "Learn steps a "
                        "prediction replica was behind when it last caught up", "model",
                        s.replica_lag_steps)
        yield _labelled(GaugeMetricFamily, "riverbed_replica_lag_seconds", "Age of the newest "
                        "learn step a prediction replica applied, when it applied it", "model",
                        s.replica_lag_seconds)
        yield s.event_to_prediction_seconds.family(
            "riverbed_event_to_prediction_seconds", "Event time to prediction time")
        yield s.predict_seconds.family("riverbed_predict_seconds",
                                       f"Model predict call (one in {TIMING_SAMPLE} timed)")
        yield s.learn_seconds.family("riverbed_learn_seconds",
                                     f"Model learn call (one in {TIMING_SAMPLE} timed)")
        for name, doc, value, kind in (
                ("riverbed_broker_connected", "1 while the broker answers, 0 while it is away",
                 int(s.broker_connected), GaugeMetricFamily),
                ("riverbed_standby", "1 while this worker is a standby for the global models",
                 int(s.role == "standby"), GaugeMetricFamily),
                ("riverbed_rejected_snapshots", "Snapshots refused by integrity checks "
                 "(restored from an older snapshot or the history instead)",
                 s.rejected_snapshots, CounterMetricFamily),
                ("riverbed_skipped_history_records", "History records that are not riverbed "
                 "events (skipped)", s.skipped_history_records, CounterMetricFamily),
                ("riverbed_rejected_replica_states", "Published model states a replica "
                 "refused (not signed with our key, or not vouched for by the history)",
                 s.rejected_replica_states, CounterMetricFamily)):
            family = kind(name, doc, labels=[])
            family.add_metric([], value)
            yield family
        for extra in self.extra:
            yield from extra()


def _labelled(kind: Any, name: str, doc: str, label: str, values: Mapping[str, float]
             ) -> Any:
    """A one-label metric family from ``{label value: number}``."""
    family = kind(name, doc, labels=[label])
    for key, number in values.items():
        family.add_metric([key], number)
    return family


def exposition(stats: WorkerStats, extra: list[Any] | None = None) -> bytes:
    """The Prometheus text exposition of ``stats`` (+ ``extra`` family generators)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, extra))
    return generate_latest(registry)
