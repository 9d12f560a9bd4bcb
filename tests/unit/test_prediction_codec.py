"""The direct Prediction writer against fastavro: the same bytes for every value.

``PredictionWriter.write`` must give exactly what the generic encoder gives for the record
the worker used to build (``{str(class): float(p)}`` probabilities), on the fast path and
on its fallback; and what the generic encoder refuses, it refuses.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riverbed.streams.codec import AvroCodec, ConfluentCodec, InMemorySchemaRegistry, parse
from riverbed.streams.prediction_codec import PREDICTION_SCHEMA, PredictionWriter, direct_writes

LONG = st.integers(-(1 << 63), (1 << 63) - 1)
REFERENCE = parse(PREDICTION_SCHEMA)
#: classes of one model share a type (a dict cannot hold True and 1 apart)
CLASSES = st.one_of(st.booleans(), st.integers(-(1 << 70), 1 << 70), st.text(max_size=80))
PROBAS = st.one_of(
    st.dictionaries(st.booleans(), st.floats(), max_size=2),
    st.dictionaries(st.integers(-(1 << 70), 1 << 70), st.floats(), max_size=70),
    st.dictionaries(st.text(max_size=80), st.floats(), max_size=5),
    st.dictionaries(CLASSES, st.floats(), max_size=4),  # mixed types: the fallback
    st.dictionaries(st.floats(allow_nan=False), st.floats(), max_size=3),
)
PREDICTIONS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(), st.text(max_size=80))


def reference(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, REFERENCE, record)
    return buffer.getvalue()


def record(model: str, lineage: int, now: int, event_id: Any, key: Any, seq: int,
           prediction: Any, proba: dict[Any, float], event_time: Any) -> dict[str, Any]:
    """The record the worker encoded before the direct writer (agents/inference.py)."""
    return {"event_id": event_id, "key": key, "model": model, "model_seq": seq,
            "lineage": lineage, "prediction": prediction,
            "probabilities": {str(k): float(v) for k, v in proba.items()},
            "event_time": event_time, "prediction_time": now}


@settings(max_examples=400, deadline=None)
@given(model=st.text(min_size=1, max_size=100), lineage=st.integers(0, 1 << 40),
       now=LONG, event_id=st.text(max_size=100), key=st.text(max_size=100),
       seq=st.integers(0, 1 << 62), prediction=PREDICTIONS, proba=PROBAS, event_time=LONG)
def test_direct_writes_the_generic_encoders_bytes(
        model: str, lineage: int, now: int, event_id: str, key: str, seq: int,
        prediction: Any, proba: dict[Any, float], event_time: int) -> None:
    generic = AvroCodec(PREDICTION_SCHEMA)
    writer = PredictionWriter(model, lineage, now, generic)
    expected_record = record(model, lineage, now, event_id, key, seq, prediction, proba,
                             event_time)
    try:
        expected = generic.encode(expected_record)
    except (ValueError, TypeError, OverflowError) as refused:
        with pytest.raises(type(refused)):
            writer.write(event_id, key, seq, prediction, proba, event_time)
        return
    assert writer.write(event_id, key, seq, prediction, proba, event_time) == expected
    assert expected == reference(expected_record)  # and both are fastavro's bytes


def test_one_writer_keeps_classes_of_different_types_apart() -> None:
    """True == 1, but a model with bool classes writes "True" and one with int classes
    "1": the writer's key cache must not answer one with the other."""
    generic = AvroCodec(PREDICTION_SCHEMA)
    writer = PredictionWriter("m", 0, 5, generic)
    for proba in ({True: 0.25, False: 0.75}, {1: 0.25, 0: 0.75}, {"1": 0.5},
                  {True: 0.5, 1.5: 0.5}, {1: 0.5, "1": 0.5}):
        expected = generic.encode(record("m", 0, 5, "e", "k", 3, None, proba, 7))
        assert writer.write("e", "k", 3, None, proba, 7) == expected


def test_values_the_schema_refuses_are_refused_as_before() -> None:
    generic = AvroCodec(PREDICTION_SCHEMA)
    writer = PredictionWriter("m", 0, 5, generic)
    for event_id, key, event_time in ((None, "k", 1), ("e", None, 1), ("e", "k", 1 << 63),
                                      ("e", "k", "soon")):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            generic.encode(record("m", 0, 5, event_id, key, 1, None, {}, event_time))
        with pytest.raises((ValueError, TypeError, OverflowError)):
            writer.write(event_id, key, 1, None, {}, event_time)
    with pytest.raises((ValueError, TypeError)):  # a probability that is not a number
        writer.write("e", "k", 1, True, {True: "high"}, 1)


def test_only_a_plain_codec_of_the_shipped_schema_is_bypassed() -> None:
    assert direct_writes(AvroCodec(PREDICTION_SCHEMA))
    other = {**PREDICTION_SCHEMA, "name": "Other"}
    assert not direct_writes(AvroCodec(other))
    framed = ConfluentCodec(InMemorySchemaRegistry(), PREDICTION_SCHEMA, "p-value")
    assert not direct_writes(framed)


def test_longs_at_every_varint_boundary_are_avros() -> None:
    from riverbed.streams.avro_write import long as avro_long

    edges = {sign * ((1 << k) + d) for k in range(64) for d in (-1, 0, 1) for sign in (1, -1)}
    for n in sorted(v for v in edges if -(1 << 63) <= v < (1 << 63)):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, "long", n)
        assert avro_long(n) == buffer.getvalue(), n


class _Twice(float):
    """A float whose float() is another number (the generic path calls float())."""

    def __float__(self) -> float:
        return 2.0


def test_values_a_direct_write_would_get_wrong_go_through_the_encoder() -> None:
    """Found by a review: seq, lineage and prediction time were written without a type or
    range check -- a numpy int64 near the bound wrapped silently, 2**63 became an 11-byte
    varint, True a 1 -- and a probability's own float() was not used."""
    import numpy as np

    generic = AvroCodec(PREDICTION_SCHEMA)
    cases: list[tuple[Any, ...]] = [  # model, lineage, now, seq, proba
        ("m", 0, 5, 1 << 63, {}), ("m", 0, 5, -(1 << 63) - 1, {}),
        ("m", 0, 5, np.int64((1 << 63) - 1), {}), ("m", 0, 5, np.int64(-5), {}),
        ("m", 0, 5, True, {}), ("m", 1 << 63, 5, 1, {}), ("m", True, 5, 1, {}),
        ("m", 0, 5.0, 1, {}), ("m", 0, np.int64(5), 1, {}), (None, 0, 5, 1, {}),
        (b"m", 0, 5, 1, {}), ("\udc80", 0, 5, 1, {}), ("m", 0, 5, 1, {True: _Twice(1.0)}),
    ]
    for model, lineage, now, seq, proba in cases:
        writer = PredictionWriter(model, lineage, now, generic)
        try:
            expected = generic.encode(record(model, lineage, now, "e", "k", seq, True,
                                             proba, 7))
        except (ValueError, TypeError, OverflowError, AttributeError) as refused:
            with pytest.raises(type(refused)):
                writer.write("e", "k", seq, True, proba, 7)
            continue
        assert writer.write("e", "k", seq, True, proba, 7) == expected, (model, lineage, seq)
