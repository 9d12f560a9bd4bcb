"""Examples packed as they are learned: the history holds the same bytes and rows as when
every feature dict was kept and packed at the end."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from riverbed.agents.inference import InferenceProcessor
from riverbed.agents.learner import Learner
from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.history import Examples, HistoryEvent, Learned
from riverbed.streams.history_codec import decode_event, encode_event
from riverbed.streams.models import OnlineModel

NAMES = ("a", "b", "c")
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
label = st.one_of(st.booleans(), st.integers(-100, 100), finite, st.text(max_size=5))


def learned(examples: Examples) -> HistoryEvent:
    return HistoryEvent("m", 2, 99, Learned(1, len(examples), {"events:0": 7}, examples, "fp"))


@given(st.lists(st.tuples(st.lists(finite, min_size=3, max_size=3), label), max_size=30))
def test_dense_examples_are_the_rows_they_pack(rows: list[tuple[list[float], Any]]) -> None:
    ids = [f"e{i}" for i in range(len(rows))]
    xs = [dict(zip(NAMES, values)) for values, _ in rows]
    ys = [y for _, y in rows]
    packed = b"".join(struct.pack("<3d", *values) for values, _ in rows)
    dense, kept = Examples.dense(ids, NAMES, packed, ys), Examples(ids, xs, ys)
    assert dense == kept and [list(x) for x in dense.xs] == [list(x) for x in kept.xs]
    assert encode_event(learned(dense)) == encode_event(learned(kept))
    assert decode_event(encode_event(learned(dense))).body == learned(kept).body


def test_dense_examples_refuse_a_packed_block_of_the_wrong_size() -> None:
    import pytest

    with pytest.raises(ValueError, match="packed bytes"):
        Examples.dense(["e1", "e2"], NAMES, struct.pack("<3d", 1.0, 2.0, 3.0), [0, 1])


SCHEMA = {"type": "record", "name": "Event", "namespace": "test", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "key", "type": "string"},
    {"name": "timestamp", "type": "long"}, {"name": "label", "type": ["null", "int"]},
    {"name": "a", "type": "double"}, {"name": "b", "type": ["null", "double"]}]}


def processor(settings: Settings) -> tuple[InferenceProcessor, AvroCodec]:
    spec = dataclasses.replace(settings.models[0], features=None)
    settings = dataclasses.replace(settings, models=(spec,))
    learner = Learner(OnlineModel(spec), cast(Any, None), cast(Any, None), b"k" * 32,
                      snapshot_every_steps=10**9, snapshot_every_s=1e9, id_window=1000,
                      probe_size=4)
    codec = AvroCodec(SCHEMA)
    return InferenceProcessor(settings, SCHEMA, codec, AvroCodec(load_schema("prediction")),
                              [learner.model], learners=[learner]), codec


@dataclasses.dataclass
class Record:
    value: bytes
    offset: int
    key: bytes = b"k"
    topic: str = "events"
    partition: int = 0


def batch_examples(proc: InferenceProcessor, codec: AvroCodec, rows: list[dict[str, Any]],
                   first_offset: int) -> Examples:
    events = [{"event_id": f"e{first_offset + i}", "key": "k", "timestamp": 1,
               "label": i % 2, **row} for i, row in enumerate(rows)]
    out = proc.process([Record(codec.encode(e), first_offset + i)
                        for i, e in enumerate(events)])
    assert not out.dead_letters
    ((_, history),) = out.history
    body = next(e.body for e in history if isinstance(e.body, Learned))
    assert isinstance(body.examples, Examples)
    return body.examples


def test_a_batch_is_packed_as_learned_and_recorded_as_before(example_settings: Settings
                                                             ) -> None:
    """Every row with every feature: packed as learned, no dicts kept. A row without a
    feature (null) in the middle of a batch: the batch's rows are kept as dicts, the
    earlier ones unpacked. Either way the record is the one the dicts would make."""
    proc, codec = processor(example_settings)
    batch_examples(proc, codec, [{"a": 0.5, "b": 0.5}], 0)  # Created: its probe unpacks
    full = [{"a": float(i), "b": i / 3} for i in range(6)]
    examples = batch_examples(proc, codec, full, 10)
    assert examples.packed is not None and examples._xs is None  # no dict kept
    expected = [{"a": r["a"], "b": r["b"]} for r in full]
    assert [dict(x) for x in examples.xs] == expected
    kept = Examples(examples.ids, expected, examples.ys)
    assert encode_event(learned(examples)) == encode_event(learned(kept))

    gappy = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": None}, {"a": 5.0, "b": 6.0}]
    examples = batch_examples(proc, codec, gappy, 100)
    assert examples.packed is None
    expected = [{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": 6.0}]
    assert [dict(x) for x in examples.xs] == expected
    assert decode_event(encode_event(learned(examples))).body == learned(
        Examples(examples.ids, expected, examples.ys)).body
