"""Every model spec of the example config (and the documented extra specs) passes the
contract checks in ``streams/checks.py``."""

from __future__ import annotations

import pytest

from riverbed.streams import checks
from riverbed.streams.config import ModelSettings, load_settings
from tests.conftest import CONFIG

EXTRA = [
    ModelSettings("hat", pipeline=({"tree.HoeffdingAdaptiveTreeClassifier": {}},), seed=3),
    ModelSettings("arf", pipeline=({"forest.ARFClassifier": {"n_models": 3}},), seed=4),
    ModelSettings("nb", pipeline=({"naive_bayes.GaussianNB": {}},)),
]
SPECS = list(load_settings(CONFIG, env={}).models) + EXTRA


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_picklable(spec: ModelSettings) -> None:
    checks.check_picklable(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_fingerprint_identical_across_processes(spec: ModelSettings) -> None:
    checks.check_fingerprint_across_processes(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_snapshot_restore_gives_identical_next_predictions(spec: ModelSettings) -> None:
    checks.check_snapshot_restore(spec)
