"""The pending-log record format: new pending events and early labels of one batch.

Features travel as float64 columns (the history's columnar layout, base64 in JSON), so a
record costs ~1.5 us per pending event to write instead of ~4.4 us with every float in
decimal, and reads back to the same floats in the same key order (exact replay).
Version 1 records (plain JSON, written before this format) are still read.

The log is read back by a worker that rebuilds its pending labels, so a record is input
like any other: :func:`check_pending` refuses a decoded record whose values riverbed could
not have written (features a model must not learn, a probability that is not a number, an
origin that is not a topic position) before anything from it is held, joined or learned.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from riverbed.streams.errors import DecodeError, ValidationError
from riverbed.streams.features import check_recorded_features
from riverbed.streams.history import Example
from riverbed.streams.history_codec import decode_columns, encode_columns
from riverbed.streams.pending import EarlyLabel, PendingEvent, Prediction

VERSION = 2


def encode_pending(events: list[PendingEvent], labels: list[EarlyLabel]) -> bytes:
    """One pending-log record."""
    rows: dict[str, list[Example]] = {}
    listed = []
    for e in events:
        made = []
        for model, x, prediction, proba, seq in e.predictions:
            rows.setdefault(model, []).append(Example(e.event_id, x, None))
            made.append([model, prediction, list(proba.items()), seq])
        listed.append([e.event_id, e.event_time, e.added_ms, made])
    features = {}
    for model, examples in rows.items():
        columns = encode_columns(examples)
        features[model] = {"names": columns["feature_names"], "dense": columns["dense"],
                           "count": len(examples),
                           "columns": columns["columns"],
                           "values": base64.b64encode(columns["values"]).decode()}
    return json.dumps({
        "v": VERSION, "events": listed, "features": features,
        "labels": [[lb.event_id, lb.label, lb.label_time, lb.added_ms,
                    base64.b64encode(lb.raw).decode(), list(lb.origin)] for lb in labels],
    }).encode()


def decode_pending(payload: bytes) -> tuple[list[PendingEvent], list[EarlyLabel]]:
    """Inverse of :func:`encode_pending` (also reads version 1 records)."""
    data = json.loads(payload)
    labels = [EarlyLabel(eid, label, lt, added, base64.b64decode(raw), tuple(origin))
              for eid, label, lt, added, raw, origin in data["labels"]]
    if data.get("v") != VERSION:
        events = [PendingEvent(eid, tuple(Prediction(m, x, p, dict(proba), s)
                                          for m, x, p, proba, s in made), et, added)
                  for eid, made, et, added in data["events"]]
        return events, labels
    xs = {model: iter(_rows(body)) for model, body in data["features"].items()}
    events = [PendingEvent(eid, tuple(Prediction(m, next(xs[m]), p, dict(proba), s)
                                      for m, p, proba, s in made), et, added)
              for eid, et, added, made in data["events"]]
    return events, labels


def _rows(body: dict[str, Any]) -> list[Any]:
    count = body["count"]
    return [e.x for e in decode_columns({
        "feature_names": body["names"], "event_ids": [""] * count, "labels": [None] * count,
        "values": base64.b64decode(body["values"]), "dense": body["dense"],
        "columns": body["columns"]})]


_INT64 = 2**63


def check_pending(events: list[PendingEvent], labels: list[EarlyLabel]) -> None:
    """DecodeError unless every value of a decoded record is one riverbed writes: ids are
    non-empty strings, times and seqs 64-bit ints, features finite floats (the limits in
    force when the record was written are not re-applied: tightening them must not drop
    pending events), probabilities numbers in [0, 1] keyed by class labels, and an early
    label's origin a (topic, partition, offset)."""
    try:
        for event in events:
            _id(event.event_id)
            _ints(event.event_time, event.added_ms)
            for made in event.predictions:
                if not isinstance(made.model, str) or not isinstance(made.x, dict):
                    raise DecodeError("a prediction's model or features are malformed")
                check_recorded_features(made.x)
                _scalar(made.prediction)
                _ints(made.seq)
                for label, p in made.proba.items():
                    _scalar(label)
                    # River's sigmoid returns the ints 0 and 1 once saturated
                    if p.__class__ not in (float, int) or not 0.0 <= p <= 1.0:
                        raise DecodeError(f"probability {p!r:.40} is not a number in [0, 1]")
        for early in labels:
            _id(early.event_id)
            _scalar(early.label)
            _ints(early.label_time, early.added_ms)
            if len(early.origin) != 3 or not isinstance(early.origin[0], str):
                raise DecodeError("an early label's origin is not (topic, partition, offset)")
            _ints(*early.origin[1:])
    except ValidationError as exc:
        raise DecodeError(f"a pending event's features: {exc}") from None


def _id(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DecodeError("an event id is not a non-empty string")


def _ints(*values: object) -> None:
    for value in values:
        if value.__class__ is not int or not -_INT64 <= value < _INT64:  # type: ignore[operator]
            raise DecodeError(f"{value!r:.40} is not a 64-bit int")


def _scalar(value: object) -> None:
    if value is not None and value.__class__ not in (bool, int, float, str):
        raise DecodeError(f"{type(value).__name__} is not a label or prediction")
