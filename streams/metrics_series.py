"""A model's metrics reports over time (``riverbed.metrics``): the points of the web page's
chart. Pure and bounded: the newest ``max_points`` reports per model are kept."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

#: Report fields a point keeps.
_FIELDS = ("time", "seq", "lineage", "kind", "metrics", "version_metrics", "events_per_s",
           "consumer_lag", "drift_events", "learned", "events")


class MetricsSeries:
    """The reports of one model, oldest first, and the last metrics of each lineage."""

    def __init__(self, max_points: int) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=max_points)
        #: lineage -> version_metrics of its last report ("metrics per version")
        self.by_lineage: dict[int, dict[str, float]] = {}

    def add(self, report: Mapping[str, Any]) -> None:
        """Keep one decoded ``MetricsReport``."""
        point = {k: report[k] for k in _FIELDS if k in report}
        for name in ("metrics", "version_metrics"):
            point[name] = {k: float(v) for k, v in dict(point.get(name) or {}).items()
                           if _finite(v)}
        if not _finite(point.get("events_per_s", 0.0)):
            point["events_per_s"] = 0.0
        self.points.append(point)
        self.by_lineage[int(point["lineage"])] = point["version_metrics"]

    def since(self, time_ms: int, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` points at or after ``time_ms``, oldest first."""
        chosen = [p for p in self.points if p["time"] >= time_ms]
        return chosen[-limit:]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
