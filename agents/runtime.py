"""Process-level tuning and diagnostics of a worker process."""

from __future__ import annotations

import asyncio
import gc
import logging
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
