"""Worker counters, kept as plain integers on the hot path and exposed to Prometheus.

Agents add to :class:`WorkerStats` once per *batch*; a custom collector turns the
numbers into Prometheus families only when ``/metrics`` is scraped, so counting costs
nothing per event. Names follow Prometheus conventions (``riverbed_..._total``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclasses.dataclass
class WorkerStats:
    """Running totals of one worker process (not shared between processes)."""

    started_at: float = dataclasses.field(default_factory=time.time)
    events: int = 0
    batches: int = 0
    predictions: Counter[str] = dataclasses.field(default_factory=Counter)
    learned: Counter[str] = dataclasses.field(default_factory=Counter)
    dead_letters: Counter[str] = dataclasses.field(default_factory=Counter)
    model_seq: dict[str, int] = dataclasses.field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (served at ``/riverbed/stats``)."""
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "events": self.events,
            "batches": self.batches,
            "predictions": dict(self.predictions),
            "learned": dict(self.learned),
            "dead_letters": dict(self.dead_letters),
            "model_seq": dict(self.model_seq),
        }


class StatsCollector(Collector):
    """Prometheus view of a :class:`WorkerStats`, computed at scrape time."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats
        events = CounterMetricFamily("riverbed_events", "Events consumed", labels=[])
        events.add_metric([], s.events)
        yield events
        predictions = CounterMetricFamily(
            "riverbed_predictions", "Predictions published", labels=["model"]
        )
        for model, n in s.predictions.items():
            predictions.add_metric([model], n)
        yield predictions
        learned = CounterMetricFamily("riverbed_learn_steps", "Learn steps applied", labels=["model"])
        for model, n in s.learned.items():
            learned.add_metric([model], n)
        yield learned
        dead = CounterMetricFamily(
            "riverbed_dead_letters", "Events sent to the dead-letter topic", labels=["reason"]
        )
        for reason, n in s.dead_letters.items():
            dead.add_metric([reason], n)
        yield dead
        seq = GaugeMetricFamily("riverbed_model_seq", "Learn steps of the live model", labels=["model"])
        for model, n in s.model_seq.items():
            seq.add_metric([model], n)
        yield seq


def exposition(stats: WorkerStats) -> bytes:
    """The Prometheus text exposition of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return generate_latest(registry)
