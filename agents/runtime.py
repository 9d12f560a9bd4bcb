"""Process-level tuning and diagnostics of a worker process."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Take start-up objects (Faust, aiokafka, River, the restored models) out of the
    cyclic collector's view and collect young objects less often. Without this, full
    collections over that heap cost ~10% of worker CPU (bench/throughput.py, gc off vs
    on). Frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


class ClientLogLimiter(logging.Filter):
    """Keeps a broker outage from flooding the log: aiokafka, Faust and mode log every
    failed connection and metadata attempt (~80 lines/s). Their warnings and errors pass at
    most once per ``interval_s`` per library, and not at all while :attr:`away` is set (the
    worker's broker watch then says what is going on, once per interval)."""

    PREFIXES = ("aiokafka", "faust", "mode", "riverbed.streams.ingest", "asyncio")

    def __init__(self, interval_s: float = 5.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.away = False
        self.suppressed = 0
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.PREFIXES):
            return True
        if record.levelno >= logging.CRITICAL or "rash" in str(record.msg):
            return True  # a crash report is never noise
        if self.away:
            self.suppressed += 1
            return False
        now = time.monotonic()
        key = record.name.split(".")[0]  # one line per library per interval
        if now - self._last.get(key, -1e9) < self.interval_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        return True

    def install(self) -> None:
        """Filter every handler of the root logger (records of child loggers pass there)."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)


def dump_tasks() -> None:
    """Log every asyncio task with its chain of awaits (diagnosing a stalled worker)."""
    tasks = asyncio.all_tasks()
    lines = [f"{len(tasks)} asyncio tasks:"]
    for task in tasks:
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                chain.append(type(awaited).__name__)
                break
            chain.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        lines.append("  " + " -> ".join(chain))
    log.warning("\n".join(sorted(lines)))
