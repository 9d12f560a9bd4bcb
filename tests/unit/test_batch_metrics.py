"""Batch-updated Accuracy and LogLoss give exactly River's values; the monitor's batch
update equals one-by-one scoring, drift positions included."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics

from riverbed.streams.batch_metrics import BatchAccuracy, BatchLogLoss
from riverbed.streams.evaluation import ModelMonitor

LABELS = st.sampled_from([0, 1, True, False])
PROBA = st.one_of(st.just({}), st.builds(lambda p: {False: 1 - p, True: p}, st.floats(0, 1)),
                  st.builds(lambda p: {0: 1 - p, 1: p}, st.floats(0, 1)))
ROWS = st.lists(st.tuples(LABELS, st.one_of(st.none(), LABELS), PROBA), max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(ROWS, max_size=4))
def test_values_are_rivers_exactly(batches: list[list[tuple[Any, Any, Any]]]) -> None:
    accuracy, log_loss = BatchAccuracy(), BatchLogLoss()
    river_accuracy, river_log_loss = metrics.Accuracy(), metrics.LogLoss()
    for rows in batches:
        predicted = [(y, p) for y, p, _ in rows if p is not None]
        accuracy.update_many([y for y, _ in predicted], [p for _, p in predicted])
        log_loss.update_many([y for y, _, _ in rows], [proba for _, _, proba in rows])
        for y, p, proba in rows:
            if p is not None:
                river_accuracy.update(y, p)
            if proba:
                river_log_loss.update(y, proba)
        assert accuracy.get() == river_accuracy.get()
        assert log_loss.get() == river_log_loss.get()


def test_batch_update_equals_one_by_one_including_drift_positions() -> None:
    import random
    rng = random.Random(3)
    rows = [(1, 1 if i < 3000 or rng.random() < 0.2 else 0, {True: 0.7, False: 0.3}, i % 50)
            for i in range(6000)]  # the error rate jumps at 3000: ADWIN must fire
    one, many = ModelMonitor("classification"), ModelMonitor("classification")
    fired_one = [i for i, row in enumerate(rows) if one.update(*row)]
    fired_many: list[int] = []
    for start in range(0, len(rows), 700):
        chunk = rows[start:start + 700]
        ys, predictions, probas, delays = zip(*chunk, strict=True)
        fired_many += [start + i for i in many.update_many(ys, predictions, probas, delays)]
    assert fired_one and fired_one == fired_many and fired_one[0] > 3000
    assert one.values() == many.values() and one.drifts == many.drifts == len(fired_one)
    assert list(one.delays) == list(many.delays)


@settings(max_examples=100, deadline=None)
@given(st.lists(ROWS, max_size=4), st.integers(0, 2))
def test_scoring_from_p_true_equals_scoring_from_the_probabilities(
        batches: list[list[tuple[Any, Any, Any]]], rollback_after: int) -> None:
    """The worker keeps only P(True) per example for the default metrics: the same values,
    drifts and delays as from every class probability, across a rollback too."""
    from riverbed.streams.batch_metrics import p_true

    dicts, floats = ModelMonitor("classification"), ModelMonitor("classification")
    assert floats.scores_p_true
    for index, rows in enumerate(batches):
        lineage = int(index >= rollback_after)
        ys, predictions, probas = ([r[i] for r in rows] for i in range(3))
        delays = list(range(len(rows)))
        fired = dicts.update_many(ys, predictions, probas, delays, lineage)
        assert floats.update_many_p_true(ys, predictions, [p_true(p) for p in probas],
                                         delays, lineage) == fired
        assert floats.values() == dicts.values()
        assert floats.version_values() == dicts.version_values()
    assert list(floats.delays) == list(dicts.delays) and floats.drifts == dicts.drifts


def test_metrics_that_read_every_probability_are_not_scored_from_p_true() -> None:
    import pytest

    monitor = ModelMonitor("classification", ("Accuracy", "ROCAUC"))
    assert not monitor.scores_p_true
    with pytest.raises(ValueError, match="every class probability"):
        monitor.update_many_p_true([True], [True], [0.9], [0])
    assert monitor.update_many([True], [True], [{True: 0.9, False: 0.1}], [0]) == []
