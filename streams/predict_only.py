"""Predictions that leave a model exactly as it was: what the HTTP API answers with. Pure.

A River ``predict_one`` is not always read-only, and the API must never change a live
model (its state is the fold of its history: a change nobody recorded would make the next
``Learned`` fingerprint differ from a replay). Found in River 0.26.1, the version pinned
when this was written:

* ``compose.Pipeline`` learns its unsupervised steps (``StandardScaler``...) during
  ``predict_one`` while the class-level ``_LEARN_UNSUPERVISED_DURING_PREDICT`` is True
  (River's ``learn_during_predict()`` context manager flips it for the whole process). Off
  by default; :func:`predict_only` refuses to predict while it is on (:class:`WouldLearn`)
  rather than flip a process-wide switch that the worker's other tasks also see.
* ``StandardScaler.transform_one`` reads ``vars[name]`` from a ``defaultdict``: a feature
  the scaler never learned is *inserted* (variance 0.0). Predictions do not change, the
  state does (its pickle grows).
* ``forest.ARF*`` and ``ensemble.SRP*`` build their ensemble inside ``predict_one`` when
  they have not learned anything yet.

So the live model answers directly only when that is known to be read-only: it has learned
(``seq > 0``), the pipeline flag is off, and every feature of the request is one the model
has certainly learned -- the event schema's non-null numeric fields, present in every event
any model learned (``streams/features.py`` always emits them). Otherwise the prediction is
made on a deep copy of the estimator, which costs a copy (tiny for an untrained model).
``tests/unit/test_predict_only.py`` checks pickle bytes and fingerprints before and after,
for several River model families.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from river import compose

from riverbed.streams.errors import RiverbedError


class WouldLearn(RiverbedError):
    """River would update the model while predicting (a process-wide switch is on)."""


def _pipelines(estimator: Any, depth: int = 0) -> Iterator[Any]:
    """Every ``compose.Pipeline`` inside ``estimator`` (steps, unions, wrapped models)."""
    if depth > 8:
        return
    if isinstance(estimator, compose.Pipeline):
        yield estimator
        children: Any = estimator.steps.values()
    elif isinstance(estimator, compose.TransformerUnion):
        children = estimator.transformers.values()
    else:
        children = [v for k, v in vars(estimator).items()
                    if not k.startswith("_") and hasattr(v, "learn_one")]
    for child in children:
        yield from _pipelines(child, depth + 1)


def learns_while_predicting(estimator: Any) -> bool:
    """True if a pipeline inside ``estimator`` would learn during ``predict_one``."""
    return any(bool(p._LEARN_UNSUPERVISED_DURING_PREDICT) for p in _pipelines(estimator))


def read_only(seq: int, xs: Sequence[Mapping[str, float]], learned: frozenset[str]) -> bool:
    """Can a model at ``seq`` predict ``xs`` without changing? Yes if it has learned
    and every feature is in ``learned`` (names every learned example had)."""
    return seq > 0 and all(x.keys() <= learned for x in xs)


def predict_only(model: Any, xs: Sequence[dict[str, float]], learned: frozenset[str]
                 ) -> list[tuple[Any, dict[Any, float]]]:
    """``model.predict(x)`` for each of ``xs``, leaving ``model`` unchanged: on the live
    estimator when :func:`read_only`, else on a deep copy. Raises :class:`WouldLearn`
    while River's learn-during-predict switch is on."""
    estimator = model.estimator
    if learns_while_predicting(estimator):
        raise WouldLearn("River's learn_during_predict is on in this process: predicting "
                         "would update the model; try again later")
    if read_only(model.seq, xs, learned):
        return [model.predict(x) for x in xs]
    scratch = type(model)(model.spec, estimator=copy.deepcopy(estimator), name=model.name)
    return [scratch.predict(x) for x in xs]
