"""``riverbed top``: a live per-model view built from the ``riverbed.metrics`` topic.

Reads every MetricsReport (and drift event) of a running deployment -- any number of
workers -- and keeps the newest report per (model, worker). Nothing is committed; a record
that is not a MetricsReport is skipped and counted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from rich.table import Table

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.errors import DecodeError
from riverbed.streams.kafka_clients import PartitionReader, Record

PRIMARY = {"classification": "Accuracy", "regression": "MAE"}


@dataclass(frozen=True)
class Fetched:
    """One fetch of the metrics topic."""

    #: the MetricsReports (and drift events) it held, in offset order
    reports: list[dict[str, Any]]
    #: records in it that are not a MetricsReport (skipped: one bad record never stops the view)
    skipped: int
    #: the reader has reached the topic's end (a view shown only then skips the backlog)
    caught_up: bool


@functools.cache
def _codec() -> AvroCodec:
    return AvroCodec(load_schema("metrics_report"))


def decode_fetch(records: Iterable[Record], caught_up: bool) -> Fetched:
    """The reports among ``records``; the rest are counted as skipped."""
    reports, skipped = [], 0
    for record in records:
        try:
            reports.append(_codec().decode(record.value or b""))
        except DecodeError:
            skipped += 1
    return Fetched(reports, skipped, caught_up)


async def fetches(settings: Settings, follow: bool, idle_timeout_s: float = 10.0
                  ) -> AsyncIterator[Fetched]:
    """The metrics topic from its start, one fetch at a time. Without ``follow``, ends once
    caught up with the topic's end (TimeoutError when nothing arrives for ``idle_timeout_s``
    before then); with it, keeps waiting for more."""
    tp = TopicPartition(settings.topics.metrics, 0)
    async with PartitionReader(settings.broker, [tp], fetch_max_wait_ms=500 if follow else 50
                               ) as reader:
        deadline = time.monotonic() + idle_timeout_s
        while True:
            records = (await reader.fetch(1000 if follow else 200)).get(tp, [])
            fetched = decode_fetch(records, await reader.caught_up())
            yield fetched
            if follow:
                continue
            if fetched.caught_up:
                return
            if records:
                deadline = time.monotonic() + idle_timeout_s
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{tp.topic}: no progress at offset "
                                   f"{await reader.position(tp)} (want {reader.highwater(tp)})")


class TopView:
    """Newest report per model, rendered as a table."""

    def __init__(self, settings: Settings) -> None:
        self.tasks = {m.name: m.task for m in settings.models}
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.drifts: dict[str, int] = {}
        #: records on the topic that were not MetricsReports
        self.skipped = 0

    def add_fetch(self, fetched: Fetched) -> None:
        """Every report of one fetch, and its count of skipped records."""
        for report in fetched.reports:
            self.add(report)
        self.skipped += fetched.skipped

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
        if self.skipped:
            table.caption = (f"{table.caption}; " if table.caption else "") + (
                f"skipped {self.skipped:,} records that are not MetricsReports")
        return table
