"""``riverbed top``: a live per-model view built from the ``riverbed.metrics`` topic.

Reads every MetricsReport (and drift event) of a running deployment -- any number of
workers -- and keeps the newest report per (model, worker). Nothing is committed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition
from rich.table import Table

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.kafka_clients import PartitionReader, read_to_end

PRIMARY = {"classification": "Accuracy", "regression": "MAE"}


async def reports(settings: Settings, follow: bool, idle_timeout_s: float = 3600.0
                  ) -> AsyncIterator[dict[str, Any]]:
    """MetricsReports from the start of the topic; with ``follow``, keep waiting for more."""
    codec = AvroCodec(load_schema("metrics_report"))
    if not follow:
        async for record in read_to_end(settings.broker, settings.topics.metrics,
                                        idle_timeout_s=idle_timeout_s):
            yield codec.decode(record.value)
        return
    tp = TopicPartition(settings.topics.metrics, 0)
    async with PartitionReader(settings.broker, [tp], fetch_max_wait_ms=500) as reader:
        while True:
            for record in (await reader.fetch(1000)).get(tp, []):
                yield codec.decode(record.value)


class TopView:
    """Newest report per model, rendered as a table."""

    def __init__(self, settings: Settings) -> None:
        self.tasks = {m.name: m.task for m in settings.models}
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.drifts: dict[str, int] = {}

    def add(self, report: dict[str, Any]) -> None:
        if report["kind"] == "drift":
            self.drifts[report["model"]] = self.drifts.get(report["model"], 0) + 1
        self.latest[(report["model"], report["worker"])] = report

    def rows(self) -> list[dict[str, Any]]:
        """One row per model (summed over workers)."""
        by_model: dict[str, list[dict[str, Any]]] = {}
        for (model, _), report in self.latest.items():
            by_model.setdefault(model, []).append(report)
        rows = []
        for model, parts in sorted(by_model.items()):
            metric = PRIMARY.get(self.tasks.get(model, "classification"), "Accuracy")
            newest = max(parts, key=lambda r: r["time"])
            rows.append({
                "model": model, "events_per_s": sum(p["events_per_s"] for p in parts),
                metric.lower(): newest["metrics"].get(metric), "model_seq": newest["seq"],
                "lineage": newest["lineage"], "pending": sum(p["pending"] for p in parts),
                "drift_events": max(newest["drift_events"], self.drifts.get(model, 0)),
                "dead_letters": sum(p["dead_letters"] for p in parts),
                "lag": sum(p.get("consumer_lag", 0) for p in parts),
                "label_delay_p50_ms": newest["label_delay_p50_ms"],
                "age_s": round(time.time() - newest["time"] / 1000, 1),
            })
        return rows

    def table(self) -> Table:
        table = Table(title="riverbed top")
        rows = self.rows()
        columns = ["model", "events/s", "accuracy/MAE", "model_seq", "pending labels",
                   "drift events", "dead letters", "lag", "label delay p50", "report age"]
        for column in columns:
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in rows:
            quality = r.get("accuracy", r.get("mae"))
            table.add_row(r["model"], f"{r['events_per_s']:,.0f}",
                          "-" if quality is None else f"{quality:.4f}",
                          f"{r['model_seq']:,} (L{r['lineage']})", f"{r['pending']:,}",
                          str(r["drift_events"]), f"{r['dead_letters']:,}", f"{r['lag']:,}",
                          f"{r['label_delay_p50_ms']:,.0f} ms", f"{r['age_s']} s")
        if not rows:
            table.caption = "no reports yet (workers report every labels.report_interval_s)"
        return table
