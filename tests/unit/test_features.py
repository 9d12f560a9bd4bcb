"""Feature extraction and validation before any model sees an event."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riverbed.schemas import load_schema
from riverbed.streams.config import EventSettings, LimitSettings, ModelSettings
from riverbed.streams.errors import ConfigError, ValidationError
from riverbed.streams.features import FeatureExtractor, LabelRule

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


def rule(task: str = "classification", *, binary: bool = False,
         classes: tuple[object, ...] | None = None, label_type: type | None = int,
         max_classes: int = 3) -> LabelRule:
    return LabelRule(task, binary=binary, classes=classes, label_type=label_type,
                     max_classes=max_classes, max_abs_value=1e6)


HOSTILE = ["abc", -2147483648, -2**40, True, 2.5, -1e300, math.nan, math.inf, "", None, b"1",
           [1], {"a": 1}]  # unhashable ones come from JSON records (training, pending)


@pytest.mark.parametrize("label", [[1], {"a": 1}, [[1]]])
def test_an_unhashable_label_is_refused_by_every_classification_rule(label: object) -> None:
    for any_rule in (rule(binary=True), rule(), rule(classes=(1, 2)), rule(label_type=None)):
        with pytest.raises(ValidationError) as caught:
            any_rule.check(label)
        assert caught.value.reason == "invalid_label"


@pytest.mark.parametrize("label", HOSTILE + [2, False])
def test_a_binary_classifier_learns_only_its_two_classes(label: object) -> None:
    """The labels that crashed or poisoned the demo's binary LR (issue riverbed 5)."""
    with pytest.raises(ValidationError) as caught:
        rule(binary=True).check(label)
    assert caught.value.reason == "invalid_label"


@pytest.mark.parametrize("label", [0, 1])
def test_a_binary_classifier_accepts_0_and_1(label: int) -> None:
    assert rule(binary=True).check(label) == label


def test_a_binary_classifier_on_boolean_labels_accepts_only_booleans() -> None:
    booleans = rule(binary=True, label_type=bool)
    assert booleans.check(True) is True and booleans.check(False) is False
    for label in (0, 1, "True"):
        with pytest.raises(ValidationError):
            booleans.check(label)


def test_listed_classes_are_matched_by_type_and_value() -> None:
    listed = rule(classes=("cat", "dog", 2))
    assert listed.check("dog") == "dog" and listed.check(2) == 2
    for label in ("bird", 2.0, True, "2"):
        with pytest.raises(ValidationError):
            listed.check(label)


def test_an_open_multiclass_model_takes_the_schema_type_up_to_max_classes() -> None:
    open_rule = rule(max_classes=3)
    for label in (0, 1, 2, 1, 0):
        assert open_rule.check(label) == label
    with pytest.raises(ValidationError, match="max_classes"):
        open_rule.check(3)
    for label in ("1", 1.0, True):  # mistyped for an int label schema
        with pytest.raises(ValidationError):
            open_rule.check(label)


@pytest.mark.parametrize("label,ok", [
    (1.5, True), (-7, True), (1e6, True), (1e6 + 1, False), (math.inf, False),
    (math.nan, False), (-1e300, False), ("1", False), (True, False), (None, False),
])
def test_regression_labels_are_finite_numbers_within_max_abs_value(label: object,
                                                                   ok: bool) -> None:
    if ok:
        assert rule("regression").check(label) == label
    else:
        with pytest.raises(ValidationError):
            rule("regression").check(label)


def test_a_binary_model_on_string_labels_must_list_its_classes() -> None:
    with pytest.raises(ConfigError):
        rule(binary=True, label_type=str)
    with pytest.raises(ConfigError):
        rule(binary=True, classes=("a", "b", "c"))
    assert rule(binary=True, label_type=str, classes=("yes", "no")).check("no") == "no"


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(), st.booleans(),
                 st.none(), st.binary()))
def test_the_binary_rule_accepts_exactly_0_and_1(label: object) -> None:
    ok = label.__class__ is int and label in (0, 1)
    try:
        rule(binary=True).check(label)
    except ValidationError:
        assert not ok
    else:
        assert ok
