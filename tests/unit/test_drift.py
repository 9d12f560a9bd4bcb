"""ADWIN on the error stream fires soon after an abrupt concept change, never when stationary."""

from __future__ import annotations

import pytest

from riverbed.streams.checks import FEATURES
from riverbed.streams.config import ModelSettings
from riverbed.streams.datasets import events
from riverbed.streams.evaluation import ModelMonitor
from riverbed.streams.models import OnlineModel

SPEC = ModelSettings("m", pipeline=({"preprocessing.StandardScaler": {}},
                                    {"linear_model.LogisticRegression": {}}))
N, CHANGE, BOUND = 20_000, 10_000, 1_000


def detections(dataset: str, seed: int) -> list[int]:
    model, monitor, fired = OnlineModel(SPEC), ModelMonitor("classification"), []
    for i, event in enumerate(events(dataset, N, seed=seed)):
        x = {f: float(event[f]) for f in FEATURES}
        prediction, proba = model.predict(x)
        if monitor.update(event["label"], prediction, proba, 0):
            fired.append(i)
        model.learn(x, event["label"])
    return fired


@pytest.mark.parametrize("seed", [1, 2])
def test_drift_detected_within_bound_after_change_and_never_when_stationary(seed: int) -> None:
    drifted = detections("agrawal-drift", seed)
    assert drifted and CHANGE <= drifted[0] <= CHANGE + BOUND
    assert detections("agrawal", seed) == []


def test_version_window_metrics_restart_with_a_new_lineage() -> None:
    monitor = ModelMonitor("classification")
    for _ in range(10):
        monitor.update(True, False, {True: 0.2, False: 0.8}, 0, lineage=0)
    assert monitor.values()["Accuracy"] == monitor.version_values()["Accuracy"] == 0.0
    for _ in range(10):
        monitor.update(True, True, {True: 0.9, False: 0.1}, 0, lineage=1)
    assert monitor.version_values()["Accuracy"] == 1.0   # only the rolled-back version
    assert monitor.values()["Accuracy"] == 0.5           # since the start
