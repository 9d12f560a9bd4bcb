"""Model specs resolve only River estimators through an explicit lookup."""

from __future__ import annotations

import pytest

from riverbed.streams.config import ModelSettings
from riverbed.streams.errors import ModelSpecError
from riverbed.streams.models import OnlineModel, build_component, build_estimator, resolve


def spec(*steps: dict, task: str = "classification", seed: int = 1) -> ModelSettings:
    return ModelSettings(name="m", task=task, pipeline=steps, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [
    "os.system", "builtins.eval", "subprocess.Popen", "river.linear_model.LogisticRegression",
    "linear_model.__class__", "linear_model._private", "__import__('os').system",
    "linear_model.LogisticRegression; import os", "utils.math.dot", "base.Estimator.__init__",
    "linear_model.importlib", "linear_model.NoSuchModel",
])
def test_names_outside_river_estimators_are_rejected(name: str) -> None:
    with pytest.raises(ModelSpecError):
        resolve(name)


def test_parameter_code_is_data_not_code() -> None:
    with pytest.raises(ModelSpecError):
        build_component("linear_model.LogisticRegression", {"l2": object()}, 1)
    model = build_component("preprocessing.StandardScaler", {"with_std": True}, 1)
    assert model.with_std is True


def test_nested_component_and_pipeline() -> None:
    estimator = build_estimator(spec(
        {"preprocessing.StandardScaler": {}},
        {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.05}}}}))
    assert type(estimator).__name__ == "Pipeline"
    assert estimator["LogisticRegression"].optimizer.learning_rate == 0.05


def test_seed_is_injected_when_the_estimator_takes_one() -> None:
    tree = build_estimator(spec({"forest.ARFClassifier": {"n_models": 2}}, seed=5))
    assert tree.seed == 5
    explicit = build_estimator(spec({"forest.ARFClassifier": {"n_models": 2, "seed": 9}}))
    assert explicit.seed == 9


def test_task_mismatch_is_rejected() -> None:
    with pytest.raises(ModelSpecError):
        build_estimator(spec({"linear_model.LinearRegression": {}}, task="classification"))


def test_bad_parameter_is_a_model_spec_error() -> None:
    with pytest.raises(ModelSpecError):
        build_estimator(spec({"linear_model.LogisticRegression": {"no_such_param": 1}}))


def test_online_model_counts_learn_steps_and_predicts() -> None:
    model = OnlineModel(spec({"linear_model.LogisticRegression": {}}))
    assert model.predict({"a": 1.0})[0] is not None or model.seq == 0
    for i in range(10):
        model.learn({"a": float(i % 2)}, i % 2 == 1)
    assert model.seq == 10
    prediction, proba = model.predict({"a": 1.0})
    assert prediction is True and set(proba) == {False, True}
