"""River models built from structured config by an explicit lookup -- never ``eval``.

A pipeline spec is a list of one-key tables ``{"<module>.<Class>": {params}}``. The
module must be one of :data:`ALLOWED_MODULES` (inside ``river``), the class must be a
public River estimator defined inside ``river``, and parameters are plain data. A
parameter value that is itself a one-key table with a dotted key is a nested component
(``optimizer = {"optim.SGD" = {lr = 0.01}}``) resolved by the same rules. Stochastic
estimators receive a seed when their constructor takes ``seed`` and none is given.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import river
from river import base, compose

from riverbed.streams.config import ModelSettings
from riverbed.streams.errors import ModelSpecError

#: River sub-packages a spec may name. Anything else is rejected.
ALLOWED_MODULES = frozenset(
    {
        "anomaly", "cluster", "compose", "drift", "ensemble", "feature_extraction",
        "feature_selection", "forest", "imblearn", "linear_model", "multiclass",
        "naive_bayes", "neighbors", "neural_net", "optim", "optim.losses",
        "optim.initializers", "optim.schedulers", "preprocessing", "rules", "stats",
        "tree", "tree.splitter",
    }
)
_PLAIN = (type(None), bool, int, float, str)


def resolve(name: str) -> type:
    """The River class called ``name`` (e.g. ``linear_model.LogisticRegression``)."""
    module_name, _, class_name = name.rpartition(".")
    if module_name not in ALLOWED_MODULES:
        raise ModelSpecError(
            f"{name!r}: module {module_name!r} is not an allowed River module "
            f"(allowed: {', '.join(sorted(ALLOWED_MODULES))})"
        )
    if not class_name.isidentifier() or class_name.startswith("_"):
        raise ModelSpecError(f"{name!r}: {class_name!r} is not a public class name")
    module = importlib.import_module(f"river.{module_name}")
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls) or not (cls.__module__ or "").startswith("river."):
        raise ModelSpecError(f"{name!r} is not a class of river.{module_name}")
    if not issubclass(cls, base.Base):
        raise ModelSpecError(f"{name!r} is not a River estimator or component")
    return cls


def _is_component(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and "." in next(iter(value))


def _param(value: Any, where: str, seed: int) -> Any:
    if _is_component(value):
        ((name, params),) = value.items()
        return build_component(name, params, seed)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [_param(v, where, seed) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _param(v, where, seed) for k, v in value.items()}
    raise ModelSpecError(f"{where}: parameter value {value!r} is not plain data")


def build_component(name: str, params: Mapping[str, Any] | None, seed: int) -> Any:
    """Instantiate the River class ``name`` with ``params`` (seed injected if accepted)."""
    cls = resolve(name)
    if params is not None and not isinstance(params, Mapping):
        raise ModelSpecError(f"{name}: parameters must be a table, got {params!r}")
    kwargs = {k: _param(v, f"{name}.{k}", seed) for k, v in (params or {}).items()}
    accepted = inspect.signature(cls).parameters
    if "seed" in accepted and "seed" not in kwargs:
        kwargs["seed"] = seed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"{name}: {exc}") from exc


def build_estimator(spec: ModelSettings) -> base.Estimator:
    """The River pipeline described by ``spec`` (one estimator when it has one step)."""
    steps = []
    for index, step in enumerate(spec.pipeline):
        ((name, params),) = step.items()
        steps.append(build_component(name, params, spec.seed + index))
    estimator = steps[0] if len(steps) == 1 else compose.Pipeline(*steps)
    expected = base.Classifier if spec.task == "classification" else base.Regressor
    if not isinstance(estimator, expected):
        raise ModelSpecError(f"model {spec.name!r}: pipeline is not a {spec.task} model")
    return estimator


class OnlineModel:
    """One named River model with its learn-step counter ``seq``.

    Not thread-safe; one agent owns it. ``seq`` counts learn steps applied so far and
    is what every prediction reports as ``model_seq``.
    """

    def __init__(self, spec: ModelSettings, estimator: base.Estimator | None = None,
                 name: str | None = None) -> None:
        self.spec = spec
        #: ``spec.name``, or ``<spec.name>@p<N>`` for a per-partition model
        self.name = name or spec.name
        self.task = spec.task
        self.estimator = estimator if estimator is not None else build_estimator(spec)
        self.seq = 0
        self.lineage = 0
        self.is_classifier = spec.task == "classification"
        #: a two-class classifier (River's binary models learn ``bool(y)``)
        self.is_binary = self.is_classifier and not getattr(self.estimator, "_multiclass", False)
        self.river_version = river.__version__

    def predict(self, x: dict[str, float]) -> tuple[Any, dict[Any, float]]:
        """(prediction, class -> probability); prediction is None before any learning."""
        if self.is_classifier:
            proba = self.estimator.predict_proba_one(x)  # type: ignore[attr-defined]
            if not proba:
                return None, {}
            return max(proba, key=proba.get), proba
        return self.estimator.predict_one(x), {}  # type: ignore[attr-defined]

    def learn(self, x: dict[str, float], y: Any) -> None:
        """Apply one learn step and advance ``seq``."""
        self.estimator.learn_one(x, y)  # type: ignore[attr-defined]
        self.seq += 1
