"""Per-partition pending takeover: a worker taking a partition over rebuilds exactly that
partition's pending events and early labels from the pending log; one releasing it drops
them without counting them as expired."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from riverbed.agents.labels import LabelJoin
from riverbed.streams.config import Settings
from riverbed.streams.pending import EarlyLabel, PendingEvent, Prediction
from riverbed.streams.pending_codec import encode_pending


@dataclasses.dataclass
class _Record:
    value: bytes
    offset: int


def _event(event_id: str, partition: int, added_ms: int) -> PendingEvent:
    made = Prediction(f"m@p{partition}", {"x": 1.0}, 0, {0: 0.6, 1: 0.4}, 3)
    return PendingEvent(event_id, (made,), added_ms - 5, added_ms)


def _label(join: LabelJoin, event_id: str, partition: int, added_ms: int) -> EarlyLabel:
    return EarlyLabel(event_id, 1, added_ms, added_ms, b"raw", (join.topic, partition, 7))


async def _log(*records: bytes) -> AsyncIterator[Any]:
    for offset, value in enumerate(records):
        yield _Record(value, offset)


async def test_takeover_adds_only_its_partition_and_skips_learned(
    example_settings: Settings,
) -> None:
    join = LabelJoin(example_settings)
    now = 1_000_000
    log = [encode_pending([_event("a2", 2, now - 30), _event("b3", 3, now - 20)],
                          [_label(join, "c2", 2, now - 25), _label(join, "d3", 3, now - 10)]),
           encode_pending([_event("e2", 2, now - 40), _event("f2", 2, now - 5)], [])]
    added = await join.rebuild(_log(*log), lambda eid: eid == "f2", now, partitions=[2],
                               models={"m@p2"})
    assert added == 4  # a2, e2, f2 and label c2 read; f2 is dropped as learned
    assert list(join.store.events) == ["e2", "a2"]  # oldest first, so expiry stays in order
    assert list(join.store.labels) == ["c2"]
    assert join.store.counters.expired_events == 0


async def test_release_drops_a_partitions_entries_without_counting_them(
    example_settings: Settings,
) -> None:
    join = LabelJoin(example_settings)
    now = 1_000_000
    log = [encode_pending([_event("a2", 2, now), _event("b3", 3, now)],
                          [_label(join, "c2", 2, now), _label(join, "d3", 3, now)])]
    await join.rebuild(_log(*log), lambda eid: False, now)  # everything (one global model)
    assert join.release(3, {"m@p3"}) == 2
    assert set(join.store.events) == {"a2"} and set(join.store.labels) == {"c2"}
    assert vars(join.store.counters) == vars(type(join.store.counters)())


def _forged(event: list[object] | None = None, label: list[object] | None = None) -> bytes:
    """A version-1 pending-log record (plain JSON, still read) with any values."""
    return json.dumps({"events": [event] if event else [],
                       "labels": [label] if label else []}).encode()


NOW = 1_000_000
GOOD_MADE = ["m", {"x": 1.0}, 0, [[0, 0.6], [1, 0.4]], 3]
FORGED = {
    "nan feature": _forged(["e", [["m", {"x": math.nan}, 0, [[0, 0.6]], 3]], NOW, NOW]),
    "inf feature": _forged(["e", [["m", {"x": math.inf}, 0, [[0, 0.6]], 3]], NOW, NOW]),
    "text feature": _forged(["e", [["m", {"x": "1"}, 0, [[0, 0.6]], 3]], NOW, NOW]),
    "text probability": _forged(["e", [["m", {"x": 1.0}, 0, [[0, "x"]], 3]], NOW, NOW]),
    "probability > 1": _forged(["e", [["m", {"x": 1.0}, 0, [[0, 7.0]], 3]], NOW, NOW]),
    "list prediction": _forged(["e", [["m", {"x": 1.0}, [0], [[0, 0.6]], 3]], NOW, NOW]),
    "empty id": _forged(["", [GOOD_MADE], NOW, NOW]),
    "text time": _forged(["e", [GOOD_MADE], "now", NOW]),
    "huge time": _forged(["e", [GOOD_MADE], 2**70, NOW]),
    "origin of two": _forged(label=["o", 1, NOW, NOW, "", ["labels", 0]]),
    "origin of text": _forged(label=["o", 1, NOW, NOW, "", ["labels", "0", 1]]),
    "map label": _forged(label=["o", {"a": 1}, NOW, NOW, "", ["labels", 0, 1]]),
}


@pytest.mark.parametrize("name", FORGED)
async def test_a_forged_pending_record_is_skipped_and_counted(
        example_settings: Settings, name: str) -> None:
    """The pending log is input: a record riverbed could not have written (a NaN feature
    that would poison the model once its label joins, a probability that crashed the
    scoring, an origin that crashed the expiry timer) is skipped and counted, and the
    honest records around it are rebuilt."""
    join = LabelJoin(example_settings)
    honest = encode_pending([_event("a", 0, NOW)], [_label(join, "b", 0, NOW)])
    added = await join.rebuild(_log(honest, FORGED[name], honest), lambda eid: False, NOW)
    assert join.skipped_records == 1
    assert added == 4 and set(join.store.events) == {"a"} and set(join.store.labels) == {"b"}
    valid = _forged(["e", [GOOD_MADE], NOW, NOW], ["o", 1, NOW, NOW, "", ["labels", 0, 1]])
    assert await LabelJoin(example_settings).rebuild(_log(valid), lambda eid: False, NOW) == 2
    # a saturated logistic regression: River's sigmoid gives the ints 0 and 1
    saturated = _forged(["s", [["m", {"x": 1e300}, 1, [[0, 0], [1, 1]], 3]], NOW, NOW])
    assert await LabelJoin(example_settings).rebuild(_log(saturated), lambda eid: False,
                                                     NOW) == 1
