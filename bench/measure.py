"""What every contender measures the same way: wall clock and CPU over its timed window."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def cpu_marks() -> tuple[float, float]:
    """(CPU seconds of this process, of the broker) now; the broker's pid comes from the
    parent (``RIVERBED_BENCH_BROKER_PID``). On 2 cores the broker competes with the worker,
    so the CPU each spends per event explains a ratio as much as the wall clock does."""
    broker = 0.0
    pid = os.environ.get("RIVERBED_BENCH_BROKER_PID")
    if pid and os.path.exists(f"/proc/{pid}/stat"):
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        broker = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.process_time(), broker


def report(first: float, last: float, count: int, extra: dict[str, Any],
           cpu_first: tuple[float, float] | None = None) -> None:
    """Print a contender's result as one JSON line (events/s over ``first``..``last``)."""
    seconds = max(last - first, 1e-9)
    if cpu_first is not None:  # CPU per event over the timed window: worker and broker
        own, broker = cpu_marks()
        extra = {**extra, "cpu_us_per_event": (own - cpu_first[0]) / count * 1e6,
                 "broker_cpu_us_per_event": (broker - cpu_first[1]) / count * 1e6}
    print(json.dumps({"events": count, "seconds": seconds, "events_per_s": count / seconds,
                      **extra}), flush=True)
