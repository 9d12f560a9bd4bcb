"""Example event streams built from datasets that ship with River (no download).

* ``agrawal``: River's Agrawal loan generator (classification function 0).
* ``agrawal-drift``: the same, switching to classification function 4 halfway (abrupt
  concept drift).
* ``phishing``: River's Phishing dataset (1,250 rows), cycled.

Each stream yields Avro-ready event dicts matching the dataset's schema in ``schemas/``.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator
from typing import Any

from river import datasets
from river.datasets import synth

from riverbed.streams.errors import UsageError

DATASET_SCHEMAS = {"agrawal": "agrawal_event", "agrawal-drift": "agrawal_event",
                   "phishing": "phishing_event"}


def check_dataset(name: str) -> None:
    """UsageError unless ``name`` is a dataset riverbed ships."""
    if name not in DATASET_SCHEMAS:
        raise UsageError(f"unknown dataset {name!r}; choose from "
                         f"{', '.join(sorted(DATASET_SCHEMAS))}")


def _rows(name: str, n: int, seed: int) -> Iterator[tuple[dict[str, Any], Any]]:
    if name == "agrawal":
        yield from synth.Agrawal(classification_function=0, seed=seed).take(n)
    elif name == "agrawal-drift":
        half = n // 2
        yield from synth.Agrawal(classification_function=0, seed=seed).take(half)
        yield from synth.Agrawal(classification_function=4, seed=seed + 1).take(n - half)
    elif name == "phishing":
        yield from itertools.islice(itertools.cycle(list(datasets.Phishing())), n)
    else:
        check_dataset(name)


def events(
    name: str, n: int, seed: int = 7, run_id: str | None = None, label_fraction: float = 1.0,
    keys: int = 1000,
) -> Iterator[dict[str, Any]]:
    """``n`` events of dataset ``name``; a ``label_fraction`` of them carry their label."""
    run_id = run_id or f"{int(time.time() * 1000):x}"
    rng = random.Random(seed)
    stamp = 0
    for i, (x, y) in enumerate(_rows(name, n, seed)):
        stamp = max(stamp, int(time.time() * 1000))  # when the event is made (never backwards)
        event: dict[str, Any] = {
            "event_id": f"{run_id}-{i}", "key": f"k{i % keys}", "timestamp": stamp,
        }
        event.update(x)
        event["label"] = y if rng.random() < label_fraction else None
        yield event


def corrupt(event: dict[str, Any], kind: int) -> dict[str, Any] | bytes:
    """A bad variant of ``event`` (kind 0..4): garbage bytes or poison feature values."""
    bad = dict(event)
    feature = next(k for k, v in event.items() if isinstance(v, float))
    if kind == 0:
        return b"\x07garbage-not-avro"
    if kind == 1:
        bad[feature] = math.nan
    elif kind == 2:
        bad[feature] = math.inf
    elif kind == 3:
        bad[feature] = 1e300
    else:
        bad["event_id"] = ""
    return bad
