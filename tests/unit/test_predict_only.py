"""API predictions leave every model as it was: pickle bytes and fingerprint before == after,
for several River families, trained or not, with the features the schema always gives and
with features the model never saw (Hypothesis draws the requests)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose

from riverbed.streams.config import ModelSettings
from riverbed.streams.models import OnlineModel
from riverbed.streams.predict_only import WouldLearn, predict_only, read_only
from riverbed.streams.snapshots import fingerprint

FEATURES = ("a", "b", "c")
LEARNED = frozenset(FEATURES)
SPECS = {
    "scaler-lr": ("classification", ({"preprocessing.StandardScaler": {}},
                                     {"linear_model.LogisticRegression": {}})),
    "tree": ("classification", ({"tree.HoeffdingTreeClassifier": {}},)),
    "arf": ("classification", ({"forest.ARFClassifier": {"n_models": 3}},)),
    "nb": ("classification", ({"preprocessing.StandardScaler": {}},
                              {"naive_bayes.GaussianNB": {}})),
    "scaler-linreg": ("regression", ({"preprocessing.StandardScaler": {}},
                                     {"linear_model.LinearRegression": {}})),
    "tree-reg": ("regression", ({"tree.HoeffdingTreeRegressor": {}},)),
}
PROBE = tuple({f: float(i + j) for j, f in enumerate(FEATURES)} for i in range(8))


def _model(name: str, learned: int) -> OnlineModel:
    task, pipeline = SPECS[name]
    model = OnlineModel(ModelSettings(name=name, task=task, pipeline=pipeline))  # type: ignore[arg-type]
    for i in range(learned):
        x = {f: float((i * 7 + k * 3) % 11) for k, f in enumerate(FEATURES)}
        model.learn(x, (i % 2 == 0) if task == "classification" else float(i % 5))
    return model


def _state(model: OnlineModel) -> tuple[bytes, str]:
    """Pickle bytes and the probe predictions. Both on a copy: predicting would build an
    untrained ARF's ensemble in the model itself (so does ``snapshots.fingerprint``)."""
    scratch = OnlineModel(model.spec, estimator=copy.deepcopy(model.estimator))
    if model.is_classifier:
        return pickle.dumps(model.estimator), fingerprint(scratch.estimator, PROBE)
    return pickle.dumps(model.estimator), repr([scratch.predict(dict(x)) for x in PROBE])


values = st.floats(-1e6, 1e6, allow_nan=False)
known = st.fixed_dictionaries({f: values for f in FEATURES})
unknown = st.dictionaries(st.sampled_from(("a", "b", "x", "y.z")), values, min_size=1)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("learned", [0, 40])
@settings(max_examples=25, deadline=None)
@given(xs=st.lists(st.one_of(known, unknown), min_size=1, max_size=5))
def test_predictions_leave_the_model_unchanged(name: str, learned: int,
                                               xs: list[dict[str, float]]) -> None:
    model = _model(name, learned)
    before = _state(model)
    made = predict_only(model, xs, LEARNED)
    assert len(made) == len(xs)
    assert _state(model) == before
    assert model.seq == learned
    # the live model answers where that is read-only: the same answers as predict()
    if read_only(model.seq, xs, LEARNED):
        assert made == [model.predict(x) for x in xs]


def test_river_would_change_these_models_without_the_guard() -> None:
    """Why the guard exists: in River 0.26 a scaler inserts unseen features on predict, an
    untrained ARF builds its ensemble (if River changes this, the guard still holds)."""
    scaler = _model("scaler-lr", 40)
    before = _state(scaler)
    scaler.predict({"a": 1.0, "b": 2.0, "c": 3.0, "new": 4.0})
    arf = _model("arf", 0)
    arf_before = pickle.dumps(arf.estimator)
    arf.predict({"a": 1.0})
    assert _state(scaler)[0] != before[0] or pickle.dumps(arf.estimator) != arf_before


def test_learning_during_predict_is_refused_not_flipped() -> None:
    model = _model("scaler-lr", 10)
    before = _state(model)
    with compose.learn_during_predict(), pytest.raises(WouldLearn):
        predict_only(model, [{"a": 1.0, "b": 1.0, "c": 1.0}], LEARNED)
    assert not compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT
    assert _state(model) == before


def test_read_only_needs_a_trained_model_and_known_features() -> None:
    x: dict[str, Any] = {"a": 1.0}
    assert read_only(1, [x], LEARNED) and not read_only(0, [x], LEARNED)
    assert not read_only(5, [{"a": 1.0, "new": 2.0}], LEARNED)
