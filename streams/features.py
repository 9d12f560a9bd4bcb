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

from riverbed.streams.config import EventSettings, LimitSettings, ModelSettings
from riverbed.streams.errors import ConfigError, ValidationError

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
        *,
        binary: bool = False,
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
        #: the labels this model may learn from (``binary``: a two-class classifier)
        self.label_rule = LabelRule(
            model.task, binary=binary and model.task == "classification",
            classes=model.classes, label_type=schema_label_type(schema, event.label_field),
            max_classes=limits.max_classes, max_abs_value=limits.max_abs_value,
            model=model.name)

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


    def widest(self) -> tuple[int, int, int]:
        """(features every event has, features at most, classes at most) of one event: a
        map field may fill up to ``limits.max_features``, an open set of classes up to
        ``limits.max_classes``."""
        features = self.max_features if self.map_fields else len(self.scalar_fields)
        rule = self.label_rule
        classes = 1 if rule.task == "regression" else (
            rule.max_classes if rule.open else len(rule.allowed))
        return len(self.scalar_fields), features, classes

    def check_example(self, x: Mapping[str, Any], y: Any) -> None:
        """Validate an example read back from the history before it is learned again: what
        would poison the model or make River raise (a feature that is not a finite float,
        a label this model cannot take); raises ValidationError. The limits in force when it
        was learned are not re-applied: tightening them must not change a restored model."""
        check_recorded_features(x)
        self.label_rule.check_recorded(y)

    def check_features(self, x: Mapping[str, Any]) -> None:
        """Validate features that were extracted elsewhere (a training record from a
        replica): each a finite float within ``max_abs_value``, at most
        ``max_features``; raises ValidationError."""
        if len(x) > self.max_features:
            raise ValidationError(
                f"{len(x)} features > limit {self.max_features}", reason="too_many_features"
            )
        m = self.max_abs
        for name, value in x.items():
            if value.__class__ is not float:
                raise ValidationError(f"feature {name!r:.80} is {type(value).__name__}, not a "
                                      "float", reason="non_numeric_feature", field=str(name))
            if not -m <= value <= m:
                _reject(name, value, m)


def check_event_id(event_id: str, max_length: int) -> None:
    """ValidationError unless ``event_id`` is non-empty and at most ``max_length`` long."""
    if not event_id:
        raise ValidationError("empty event id", reason="missing_event_id")
    if len(event_id) > max_length:
        raise ValidationError(f"event id of {len(event_id):,} characters > limit "
                              f"{max_length} (limits.max_event_id_length)",
                              reason="event_id_too_long")


def check_recorded_features(x: Mapping[str, Any]) -> None:
    """ValidationError unless every feature is a finite float (a record riverbed wrote)."""
    for name, value in x.items():
        if value.__class__ is not float or value - value != 0.0:  # NaN and inf: not 0
            raise ValidationError(f"recorded feature {name!r:.80} is {value!r:.40}",
                                  reason="non_finite_feature", field=str(name))


def _coerce_slow(name: str, value: Any, limit: float) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int) and -limit <= value <= limit:
        return float(value)
    if value is None:
        raise ValidationError(f"feature {name!r} is null inside a map",
                              reason="non_numeric_feature", field=name)
    if not isinstance(value, int | float):
        raise ValidationError(
            f"feature {name!r} is {type(value).__name__}, not a number",
            reason="non_numeric_feature", field=name,
        )
    if not -limit <= value <= limit:
        _reject(name, value, limit)
    return value


def _reject(name: str, value: float, limit: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"feature {name!r} is {value}", reason="non_finite_feature",
                              field=name)
    raise ValidationError(
        f"feature {name!r}={value!r} exceeds |{limit:g}|", reason="feature_out_of_range",
        field=name,
    )


_LABEL_TYPES: dict[str, type] = {"int": int, "long": int, "boolean": bool, "string": str,
                                 "float": float, "double": float}


def schema_label_type(schema: Mapping[str, Any], label_field: str) -> type | None:
    """The Python type of the event schema's label field (its non-null branch), if simple."""
    for field in schema.get("fields", []):
        if field["name"] == label_field:
            base = _base_type(field["type"])
            return _LABEL_TYPES.get(base) if isinstance(base, str) else None
    return None


class LabelRule:
    """Which labels one model may learn from; checked before any model sees a label.

    River mutates a model before it notices a bad label (a string label crashes a
    logistic regression half-way; ``-2**31`` saturates its weights), so every label,
    inline or from the labels topic, passes :meth:`check` first:

    * classification with ``classes`` in the spec: exactly one of those values, of the
      same type (``True`` is not ``1``);
    * a binary classifier without ``classes``: the two classes of the event schema's label
      type (``0``/``1`` for int, ``False``/``True`` for boolean);
    * a multiclass classifier without ``classes``: a value of the event schema's label type,
      at most ``max_classes`` distinct classes (remembered since the process started);
    * regression: an int or float (not bool), finite, ``|y| <= max_abs_value``.

    Anything else raises :class:`ValidationError` with reason ``invalid_label``.
    """

    def __init__(self, task: str, *, binary: bool, classes: tuple[Any, ...] | None,
                 label_type: type | None, max_classes: int, max_abs_value: float,
                 model: str = "model") -> None:
        self.task = task
        self.max_abs = float(max_abs_value)
        self.max_classes = max_classes
        self.label_type = label_type
        self.open = False  # multiclass without a list: classes are learned up to the bound
        self.open_types: tuple[type, ...] = ()
        self.allowed: set[tuple[type, Any]] = set()
        if task == "regression":
            return
        if classes is not None:
            self.allowed = {(type(c), c) for c in classes}
            if binary and len(self.allowed) != 2:
                raise ConfigError(f"models[{model}].classes",
                                  f"a binary classifier has 2 classes, got {list(classes)}")
        elif binary:
            if label_type is int:
                self.allowed = {(int, 0), (int, 1)}
            elif label_type is bool:
                self.allowed = {(bool, False), (bool, True)}
            else:
                raise ConfigError(f"models[{model}].classes", "a binary classifier on "
                                  f"{getattr(label_type, '__name__', 'these')} labels needs "
                                  "its two classes listed")
        else:
            if label_type is float:
                raise ConfigError(f"models[{model}].classes", "list the classes: the event "
                                  "schema's label is a float, not a class")
            self.open = True
            #: no label field in the event schema (labels come from the labels topic only)
            self.open_types = (label_type,) if label_type is not None else (int, str)

    def check_recorded(self, label: Any) -> None:
        """ValidationError unless ``label`` is one this model may have learned: as
        :meth:`check`, except that an open set of classes is not counted (each process's
        rule starts empty, so a long history may hold more than ``max_classes``)."""
        if self.open and label.__class__ in self.open_types and label != "":
            return
        self.check(label)

    def check(self, label: Any) -> Any:
        """``label`` if this model may learn from it; ValidationError otherwise."""
        if self.task == "regression":
            if label.__class__ is float or label.__class__ is int:
                if -self.max_abs <= label <= self.max_abs:  # False for NaN and inf
                    return label
                raise ValidationError(f"label {label!r} is not finite or exceeds "
                                      f"|{self.max_abs:g}|", reason="invalid_label")
            raise ValidationError(f"label {label!r} is not a number", reason="invalid_label")
        key = (label.__class__, label)
        try:
            known = key in self.allowed
        except TypeError:  # unhashable: a list or a map read from a topic is no class
            raise ValidationError(f"label of type {label.__class__.__name__} is not a class",
                                  reason="invalid_label") from None
        if known:
            return label
        if self.open and label.__class__ in self.open_types and label != "":
            if len(self.allowed) < self.max_classes:
                self.allowed.add(key)
                return label
            raise ValidationError(f"label {label!r} would be class {len(self.allowed) + 1} "
                                  f"> limits.max_classes {self.max_classes}",
                                  reason="invalid_label")
        expected = (sorted((repr(v) for _, v in self.allowed)) if not self.open
                    else f"a {getattr(self.label_type, '__name__', '?')}")
        raise ValidationError(f"label {label!r} ({type(label).__name__}) is not a class of "
                              f"this model (expected {expected})", reason="invalid_label")
