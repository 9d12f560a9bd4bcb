"""What every contender measures the same way: wall clock and CPU over its timed window."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def process_cpu_s(pid: int | str | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0 if it is gone)."""
    if not pid or not os.path.exists(f"/proc/{pid}/stat"):
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_marks(pids: tuple[int, ...] = ()) -> tuple[float, float]:
    """(CPU seconds of this process -- or of ``pids`` -- and of the broker) now; the
    broker's pid comes from the parent (``RIVERBED_BENCH_BROKER_PID``). On 2 cores the
    broker competes with the worker, so the CPU each spends per event explains a ratio
    as much as the wall clock does."""
    own = sum(map(process_cpu_s, pids)) if pids else time.process_time()
    return own, process_cpu_s(os.environ.get("RIVERBED_BENCH_BROKER_PID"))


def report(first: float, last: float, count: int, extra: dict[str, Any],
           cpu_first: tuple[float, float] | None = None, pids: tuple[int, ...] = ()) -> None:
    """Print a contender's result as one JSON line (events/s over ``first``..``last``;
    CPU per event since ``cpu_first``, of this process or of ``pids``)."""
    seconds = max(last - first, 1e-9)
    if cpu_first is not None:  # CPU per event over the timed window: worker and broker
        own, broker = cpu_marks(pids)
        extra = {**extra, "cpu_us_per_event": (own - cpu_first[0]) / count * 1e6,
                 "broker_cpu_us_per_event": (broker - cpu_first[1]) / count * 1e6}
    print(json.dumps({"events": count, "seconds": seconds, "events_per_s": count / seconds,
                      **extra}), flush=True)


_SPIN = ("import time\nend = time.perf_counter() + {seconds}\nn = 0\n"
         "while time.perf_counter() < end:\n    sum(range(1000))\n    n += 1\nprint(n)")


def two_process_scaling(seconds: float = 2.0) -> float:
    """How much work two CPU-bound Python processes get done together, relative to one
    alone, on this host right now: the ceiling for "2 workers vs 1 worker" (a 2-core VM
    whose vCPUs share physical cores with neighbours reads 1.6-1.96 here)."""
    import subprocess
    import sys

    def spin(count: int) -> int:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=seconds)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(count)]
        return sum(int(proc.communicate()[0]) for proc in procs)

    return spin(2) / spin(1)
