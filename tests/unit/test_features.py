"""Feature extraction and validation before any model sees an event."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import load_schema
from streams.config import EventSettings, LimitSettings, ModelSettings
from streams.errors import ConfigError, ValidationError
from streams.features import FeatureExtractor, validate_label

SCHEMA = load_schema("agrawal_event")
MODEL = ModelSettings(name="m", pipeline=({"linear_model.LogisticRegression": {}},))
EVENT = {"event_id": "e1", "key": "k1", "timestamp": 1, "salary": 1.5, "commission": 0.0,
         "age": 30, "elevel": 1, "car": 2, "zipcode": 3, "hvalue": 4.0, "hyears": 5,
         "loan": 6.0, "label": 1}


def extractor(model: ModelSettings = MODEL, **limits: float) -> FeatureExtractor:
    return FeatureExtractor(SCHEMA, EventSettings(), model, LimitSettings(**limits))  # type: ignore[arg-type]


def test_metadata_fields_are_not_features() -> None:
    x = extractor().extract(EVENT)
    assert set(x) == {"salary", "commission", "age", "elevel", "car", "zipcode", "hvalue",
                      "hyears", "loan"}


def test_allowlist() -> None:
    model = ModelSettings(name="m", pipeline=MODEL.pipeline, features=("age", "loan"))
    assert extractor(model).extract(EVENT) == {"age": 30, "loan": 6.0}


def test_allowlist_naming_unknown_field_is_a_config_error() -> None:
    model = ModelSettings(name="m", pipeline=MODEL.pipeline, features=("nope",))
    with pytest.raises(ConfigError):
        extractor(model)


@pytest.mark.parametrize("value,reason", [
    (math.nan, "non_finite_feature"), (math.inf, "non_finite_feature"),
    (-math.inf, "non_finite_feature"), (1e300, "feature_out_of_range"),
    ("12", "non_numeric_feature"), ([1.0], "non_numeric_feature"),
])
def test_bad_values_are_rejected(value: object, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        extractor().extract({**EVENT, "salary": value})
    assert info.value.reason == reason


def test_bool_becomes_float_and_none_is_missing() -> None:
    x = extractor().extract({**EVENT, "salary": True, "loan": None})
    assert x["salary"] == 1.0 and "loan" not in x


def test_too_many_features_from_a_map_field() -> None:
    schema = {"type": "record", "name": "E", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "extra", "type": {"type": "map", "values": "double"}}]}
    fx = FeatureExtractor(schema, EventSettings(), MODEL, LimitSettings(max_features=3))
    assert fx.extract({"event_id": "e", "extra": {"a": 1.0, "b": 2.0}}) == {
        "extra.a": 1.0, "extra.b": 2.0}
    with pytest.raises(ValidationError) as info:
        fx.extract({"event_id": "e", "extra": {str(i): 1.0 for i in range(4)}})
    assert info.value.reason == "too_many_features"


def test_schema_with_more_features_than_the_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        extractor(max_features=3)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_value_passes_iff_finite_and_within_limit(value: float) -> None:
    fx = extractor(max_abs_value=1e6)
    ok = math.isfinite(value) and abs(value) <= 1e6
    try:
        x = fx.extract({**EVENT, "salary": value})
    except ValidationError:
        assert not ok
    else:
        assert ok and x["salary"] == value


@pytest.mark.parametrize("label,task,ok", [
    (1, "classification", True), (True, "classification", True), ("cat", "classification", True),
    ("", "classification", False), (math.nan, "classification", False),
    (1.5, "regression", True), (math.inf, "regression", False), ("1", "regression", False),
    (True, "regression", False),
])
def test_labels(label: object, task: str, ok: bool) -> None:
    if ok:
        assert validate_label(label, task) == label
    else:
        with pytest.raises(ValidationError):
            validate_label(label, task)
