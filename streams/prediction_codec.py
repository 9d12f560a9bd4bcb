"""Avro binary of ``riverbed.Prediction`` (``schemas/prediction.avsc``), written directly.

The worker writes one Prediction per event and model; through a generic Avro encoder that
costs a record dict, a ``probabilities`` dict with string keys, and the encoder's walk
over both (about a fifth of the worker's per-event CPU with a light model). A
:class:`PredictionWriter` writes the same bytes from the values themselves: the fields
that are constant within one batch (model, lineage, prediction time) are encoded once,
class keys once per class, and each event adds its id, key, seq, prediction,
probabilities and event time. Pure: no I/O.

Exactly the bytes of the generic encoder (property test:
``tests/unit/test_prediction_codec.py`` against fastavro). A value outside the common
types (not a ``str`` id or key, a prediction that is not None/bool/int/float/str, a long
out of range) goes through the generic encoder instead, so it is written -- or refused
with its error -- exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from riverbed.schemas import load_schema
from riverbed.streams.avro_write import DOUBLE, LONG_MAX, LONG_MIN, long, small, string
from riverbed.streams.codec import AvroCodec, Encoder

__all__ = ["PREDICTION_SCHEMA", "PredictionWriter", "direct_writes"]

#: the shipped schema this module writes (a codec of any other schema is not bypassed)
PREDICTION_SCHEMA = load_schema("prediction")


def _is_long(value: Any) -> bool:
    """A plain ``int`` within Avro's long (not a bool, not a numpy integer that wraps)."""
    return value.__class__ is int and LONG_MIN <= value <= LONG_MAX


def direct_writes(encoder: Encoder) -> bool:
    """May predictions bypass ``encoder``? Only a plain Avro codec of the shipped schema
    (a registry codec frames its records and may carry another schema version)."""
    return type(encoder) is AvroCodec and encoder.schema == PREDICTION_SCHEMA


class PredictionWriter:
    """Writes one model's Predictions within one batch (model, lineage and prediction
    time fixed); ``fallback`` writes what this writer does not handle itself."""

    __slots__ = ("_constant", "_fallback", "_keys", "_lineage", "_model", "_time")

    def __init__(self, model: str, lineage: int, prediction_time: int,
                 fallback: Encoder) -> None:
        self._model, self._lineage, self._time = model, lineage, prediction_time
        self._fallback = fallback  # also the only writer unless it may be bypassed
        #: model, lineage and prediction time as bytes (None: a codec that may not be
        #: bypassed, or not plain values -- everything goes through ``fallback``, which
        #: writes or refuses them as always)
        self._constant: tuple[bytes, bytes, bytes] | None = None
        if (direct_writes(fallback) and model.__class__ is str and _is_long(lineage)
                and _is_long(prediction_time)):
            with contextlib.suppress(UnicodeEncodeError):
                self._constant = (string(model), long(lineage), long(prediction_time))
        #: class type -> class -> encoded map key (by type: True == 1, but prints "True")
        self._keys: dict[type, dict[Any, bytes]] = {}

    def write(self, event_id: Any, key: Any, seq: int, prediction: Any,
              proba: Mapping[Any, float], event_time: Any) -> bytes:
        """The Avro bytes of this Prediction."""
        try:
            return self._direct(event_id, key, seq, prediction, proba, event_time)
        except Exception:  # e.g. a probability that is not a number: as the encoder says
            return self._generic(event_id, key, seq, prediction, proba, event_time)

    def _direct(self, event_id: Any, key: Any, seq: int, prediction: Any,
                proba: Mapping[Any, float], event_time: Any) -> bytes:
        kind, constant = prediction.__class__, self._constant
        if (constant is None or event_id.__class__ is not str or key.__class__ is not str
                or event_time.__class__ is not int or seq.__class__ is not int
                or not LONG_MIN <= event_time <= LONG_MAX or not LONG_MIN <= seq <= LONG_MAX
                or not (kind is bool or kind is float or kind is str or prediction is None
                        or (kind is int and LONG_MIN <= prediction <= LONG_MAX))):
            return self._generic(event_id, key, seq, prediction, proba, event_time)
        model, lineage, tail = constant
        parts = [string(event_id), string(key), model, long(seq), lineage]
        if prediction is None:
            parts.append(b"\x00")
        elif kind is bool:
            parts.append(b"\x02\x01" if prediction else b"\x02\x00")
        elif kind is int:
            parts += (b"\x04", long(prediction))
        elif kind is float:
            parts += (b"\x06", DOUBLE(prediction))
        else:
            parts += (b"\x08", string(prediction))
        if proba:
            kind = next(iter(proba)).__class__  # every class of one type: no two keys
            keys = self._keys.get(kind)          # can print the same (1 and "1")
            if keys is None:
                if not (kind is bool or kind is int or kind is str):
                    return self._generic(event_id, key, seq, prediction, proba, event_time)
                keys = self._keys[kind] = {}
            count = len(proba)
            parts.append(small[count] if count < 64 else long(count))
            for label, p in proba.items():
                if label.__class__ is not kind:
                    return self._generic(event_id, key, seq, prediction, proba, event_time)
                encoded = keys.get(label)
                if encoded is None:
                    encoded = keys[label] = string(str(label))
                parts += (encoded, DOUBLE(p if p.__class__ is float else float(p)))
        parts += (b"\x00", long(event_time), tail)
        return b"".join(parts)

    def _generic(self, event_id: Any, key: Any, seq: int, prediction: Any,
                 proba: Mapping[Any, float], event_time: Any) -> bytes:
        return self._fallback.encode({
            "event_id": event_id, "key": key, "model": self._model, "model_seq": seq,
            "lineage": self._lineage, "prediction": prediction,
            "probabilities": {str(k): float(v) for k, v in proba.items()},
            "event_time": event_time, "prediction_time": self._time})
