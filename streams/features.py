"""Event record -> validated feature dict for one model.

Metadata fields (id, key, timestamp, label) never become features. Scalar numeric
fields are read by name from a list computed once from the schema; a ``map`` field of
numbers is flattened as ``field.key`` (so events may carry open-ended features, which
is where the feature-count limit bites). Validation happens *before* any model sees
the features, because River mutates state before raising and one NaN ruins a linear
model forever:

* types: int, float or bool (bools become 0.0/1.0); ``None`` means "missing" and is
  left out (River models accept sparse dicts);
* every value finite and ``|v| <= max_abs_value``;
* at most ``max_features`` features.

The hot path does one chained comparison per value (``-m <= v <= m`` is False for
NaN and +/-inf) and only works out the precise reason when that fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streams.config import EventSettings, LimitSettings, ModelSettings
from streams.errors import ConfigError, ValidationError

_NUMERIC = {"int", "long", "float", "double", "boolean"}
_SKIP = object()


def _base_type(avro_type: Any) -> Any:
    """The non-null branch of a ``["null", X]`` union, else the type itself."""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        return branches[0] if len(branches) == 1 else avro_type
    if isinstance(avro_type, dict) and avro_type.get("type") in _NUMERIC:
        return avro_type["type"]
    return avro_type


class FeatureExtractor:
    """Builds the feature dict of one model from decoded event records."""

    def __init__(
        self,
        schema: Mapping[str, Any],
        event: EventSettings,
        model: ModelSettings,
        limits: LimitSettings,
    ) -> None:
        metadata = {event.id_field, event.key_field, event.timestamp_field, event.label_field}
        allow = set(model.features) if model.features is not None else None
        scalars: list[str] = []
        maps: list[str] = []
        for field in schema.get("fields", []):
            name, avro_type = field["name"], _base_type(field["type"])
            if name in metadata or (allow is not None and name not in allow):
                continue
            if isinstance(avro_type, str) and avro_type in _NUMERIC:
                scalars.append(name)
            elif isinstance(avro_type, dict) and avro_type.get("type") == "map":
                maps.append(name)
            elif allow is not None:
                raise ConfigError(
                    f"models[{model.name}].features", f"{name!r} is not numeric ({avro_type})"
                )
        if allow is not None and (missing := allow - set(scalars) - set(maps)):
            raise ConfigError(
                f"models[{model.name}].features", f"not in the event schema: {sorted(missing)}"
            )
        if len(scalars) > limits.max_features:
            raise ConfigError("limits.max_features", f"schema has {len(scalars)} features")
        self.scalar_fields = tuple(scalars)
        self.map_fields = tuple(maps)
        self.max_abs = float(limits.max_abs_value)
        self.max_features = limits.max_features

    def extract(self, record: Mapping[str, Any]) -> dict[str, float]:
        """Validated features of ``record``; raises ValidationError with a reason code."""
        x: dict[str, float] = {}
        m = self.max_abs
        for name in self.scalar_fields:
            value = record[name]
            if value.__class__ is float:
                if not -m <= value <= m:
                    _reject(name, value, m)
                x[name] = value
            elif value.__class__ is int:  # floats, so live learning == replay from history
                if not -m <= value <= m:
                    _reject(name, value, m)
                x[name] = float(value)
            elif value is not None:
                x[name] = _coerce_slow(name, value, m)
        for field in self.map_fields:
            extra = record.get(field)
            if extra:
                for key, value in extra.items():
                    x[f"{field}.{key}"] = _coerce_slow(f"{field}.{key}", value, m)
        if len(x) > self.max_features:
            raise ValidationError(
                f"{len(x)} features > limit {self.max_features}", reason="too_many_features"
            )
        return x


def _coerce_slow(name: str, value: Any, limit: float) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int) and -limit <= value <= limit:
        return float(value)
    if value is None:
        raise ValidationError(f"feature {name!r} is null inside a map",
                              reason="non_numeric_feature")
    if not isinstance(value, int | float):
        raise ValidationError(
            f"feature {name!r} is {type(value).__name__}, not a number",
            reason="non_numeric_feature",
        )
    if not -limit <= value <= limit:
        _reject(name, value, limit)
    return value


def _reject(name: str, value: float, limit: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"feature {name!r} is {value}", reason="non_finite_feature")
    raise ValidationError(
        f"feature {name!r}={value!r} exceeds |{limit:g}|", reason="feature_out_of_range"
    )


def validate_label(label: Any, task: str) -> Any:
    """The label if a model of ``task`` may learn from it; raises ValidationError otherwise."""
    if label.__class__ is int and task == "classification":  # the common case, fast
        return label
    if task == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float):
            raise ValidationError(f"label {label!r} is not a number", reason="invalid_label")
        if not math.isfinite(label):
            raise ValidationError(f"label is {label}", reason="invalid_label")
        return label
    if isinstance(label, float) and not math.isfinite(label):
        raise ValidationError(f"label is {label}", reason="invalid_label")
    if not isinstance(label, bool | int | str | float) or label == "":
        raise ValidationError(f"label {label!r} is not a class", reason="invalid_label")
    return label
