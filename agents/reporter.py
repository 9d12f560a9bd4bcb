"""Metrics reporter: periodic Avro MetricsReports, drift events, Prometheus model metrics.

Delivery guarantee: best effort. Reports are telemetry, sent with ``acks=all`` but not
retried across crashes; the numbers they carry are cumulative, so a lost report loses
resolution, not totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from riverbed.agents.inference import InferenceProcessor
from riverbed.agents.labels import LabelJoin
from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.models import OnlineModel
from riverbed.streams.output import BatchProducer
from riverbed.streams.telemetry import WorkerStats

log = logging.getLogger(__name__)


class Reporter:
    """Builds and publishes reports for the models of one worker, from what it is given:
    the processor's models and monitors, the label join's store, the inputs' lag."""

    def __init__(self, settings: Settings, stats: WorkerStats, processor: InferenceProcessor,
                 join: LabelJoin | None, lag: Callable[[], Mapping[TopicPartition, int]],
                 output: BatchProducer) -> None:
        self.stats, self.processor, self.join, self.lag = stats, processor, join, lag
        self.output = output
        self.worker_name = settings.worker.group_id
        self.topic = settings.topics.metrics
        self.codec = AvroCodec(load_schema("metrics_report"))
        self._last = (time.monotonic(), 0)

    def report(self, model: OnlineModel, kind: str = "report") -> dict[str, Any]:
        """One MetricsReport dict for ``model``."""
        stats, monitor = self.stats, self.processor.monitors[model.name]
        store = self.join.store if self.join is not None else None
        now = time.monotonic()
        then, events_then = self._last
        rate = (stats.events - events_then) / max(now - then, 1e-9)
        p50, p99 = monitor.delay_quantiles()
        return {
            "model": model.name, "kind": kind, "time": int(time.time() * 1000),
            "worker": self.worker_name, "seq": model.seq, "lineage": model.lineage,
            "events": stats.events, "predictions": stats.predictions[model.name],
            "learned": stats.learned[model.name], "dead_letters": stats.dead_letters.total(),
            "labels_joined": store.counters.joined + store.counters.early_joined if store else 0,
            "pending": len(store.events) if store else 0,
            "expired": store.counters.expired_events if store else 0,
            "drift_events": monitor.drifts, "metrics": monitor.values(),
            "version_metrics": monitor.version_values(),
            "label_delay_p50_ms": p50, "label_delay_p99_ms": p99, "events_per_s": rate,
            "consumer_lag": sum(self.lag().values()),
        }

    async def run(self, interval_s: float) -> None:
        """Publish a report every ``interval_s`` until cancelled. A report that waits for
        its acks (the broker is away) delays the next one instead of piling more up behind
        it: the numbers are cumulative, so a late tick loses resolution, not totals."""
        while True:
            started = time.monotonic()
            await self.publish()
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def publish(self, kind: str = "report", models: list[str] | None = None) -> None:
        """Send one report per model (or the named ones) to the metrics topic."""
        producer = self.output.producer
        if producer is None:
            return
        futures = []
        try:  # telemetry: a report lost while the broker is away is skipped, not fatal
            for model in self.processor.models:
                if models is None or model.name in models:
                    value = self.codec.encode(self.report(model, kind))
                    futures.append(await producer.send(self.topic, value=value,
                                                       key=model.name.encode()))
            for future in futures:
                await future
        except KafkaError as exc:
            log.warning("metrics report not published: %r", exc)
            return
        if kind == "report":
            self._last = (time.monotonic(), self.stats.events)

    def families(self) -> Iterator[Metric]:
        """Prometheus families computed at scrape time."""
        metric = GaugeMetricFamily("riverbed_model_metric", "Progressive-validation metric value",
                                   labels=["model", "metric"])
        version = GaugeMetricFamily("riverbed_model_version_metric",
                                    "Metric over the current model version (lineage) only",
                                    labels=["model", "metric"])
        for name, monitor in self.processor.monitors.items():
            for metric_name, value in monitor.values().items():
                metric.add_metric([name, metric_name], value)
            for metric_name, value in monitor.version_values().items():
                version.add_metric([name, metric_name], value)
        yield metric
        yield version
        store = self.join.store if self.join is not None else None
        pending = GaugeMetricFamily("riverbed_pending_labels", "Events waiting for a label")
        pending.add_metric([], len(store.events) if store else 0)
        yield pending
        early = GaugeMetricFamily("riverbed_early_labels", "Labels waiting for their event")
        early.add_metric([], len(store.labels) if store else 0)
        yield early
        joined = CounterMetricFamily("riverbed_labels_joined",
                                     "Labels joined to their event (either arrival order)")
        joined.add_metric([], store.counters.joined + store.counters.early_joined if store else 0)
        yield joined
        for name, field, doc in (("riverbed_expired_labels", "expired_events",
                                  "Pending events whose label never came"),
                                 ("riverbed_duplicate_labels", "duplicate_labels",
                                  "Labels for events already learned"),
                                 ("riverbed_pending_evicted", "evicted",
                                  "Pending entries evicted by the bound")):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], getattr(store.counters, field) if store else 0)
            yield family
        skipped = CounterMetricFamily("riverbed_skipped_pending_records",
                                      "Pending-log records that did not decode (skipped)")
        skipped.add_metric([], self.join.skipped_records if self.join is not None else 0)
        yield skipped
        lag = GaugeMetricFamily("riverbed_consumer_lag", "High-water mark minus confirmed "
                                "position", labels=["topic", "partition"])
        for tp, value in self.lag().items():
            lag.add_metric([tp.topic, str(tp.partition)], value)
        yield lag

