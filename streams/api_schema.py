"""The worker's HTTP API as data: request checks and the OpenAPI 3 document. Pure: no I/O.

Both are derived from the same definitions -- the event schema (through :class:`EventForm`),
the limits in :class:`~streams.config.WorkerSettings` and the response shapes below -- so
the document served at ``/openapi.json`` describes exactly what ``agents/web.py`` accepts
and answers.

A predict request carries one event (a JSON object) or a list of them, with the fields of
the event schema. The metadata fields may be left out: the event id defaults to
``api-<n>``, the key to ``""`` and the timestamp to the time of the request. Each event is
then checked against the Avro schema here (naming the first field that does not fit) and
validated by the worker exactly like an event read from Kafka: reason codes are the
dead-letter reasons (``decode_error`` for anything the schema refuses,
``non_finite_feature``, ``feature_out_of_range``, ``invalid_label``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from riverbed.streams.config import EventSettings

#: Avro numeric types and the JSON Schema type of each.
_JSON_TYPE = {"int": "integer", "long": "integer", "float": "number", "double": "number",
              "boolean": "boolean", "string": "string"}
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_MAX_DOUBLE = 1.7976931348623157e308


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, the ``field`` at fault (a JSON path such
    as ``events[2].age`` or a query parameter), the dead-letter ``reason`` where the event
    validation gave one, and every error found (``errors``, bounded)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 reason: str | None = None, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.reason = reason
        self.errors = list(errors)

    def body(self) -> dict[str, Any]:
        """The JSON error body (``Error`` in the OpenAPI document)."""
        body: dict[str, Any] = {"error": str(self), "field": self.field, "reason": self.reason}
        if self.errors:
            body["errors"] = self.errors
        return body


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of the event schema as the API sees it."""

    name: str
    #: the Avro type without its null branch (a name like ``double``, or a dict / list)
    avro: Any
    nullable: bool
    #: may be left out of a request (nullable, has a default, or metadata the API fills)
    optional: bool


class EventForm:
    """The JSON shape of an event, read from its Avro schema."""

    def __init__(self, schema: Mapping[str, Any], event: EventSettings) -> None:
        self.event = event
        self.fields: list[Field] = []
        metadata = {event.id_field, event.key_field, event.timestamp_field}
        for raw in schema.get("fields", []):
            avro, nullable = _strip_null(raw["type"])
            optional = nullable or "default" in raw or raw["name"] in metadata
            self.fields.append(Field(raw["name"], avro, nullable, optional))
        self.by_name = {f.name: f for f in self.fields}
        #: numeric fields that can never be null: every event a model learned had them
        self.required_numeric = frozenset(
            f.name for f in self.fields
            if not f.nullable and _type_name(f.avro) in ("int", "long", "float", "double",
                                                         "boolean"))

    def check(self, value: Any, where: str, number: int, now_ms: int) -> dict[str, Any]:
        """The Avro record for the JSON event ``value`` (defaults filled in), or ApiError
        (422, reason ``decode_error``) naming the first field the schema refuses."""
        if not isinstance(value, dict):
            raise _refused(where, f"an event is a JSON object, got {_json_kind(value)}")
        unknown = [k for k in value if k not in self.by_name]
        if unknown:
            raise _refused(f"{where}.{unknown[0]}", "not a field of the event schema")
        record: dict[str, Any] = {}
        ev = self.event
        for field in self.fields:
            path = f"{where}.{field.name}"
            if field.name not in value:
                record[field.name] = self._default(field, number, now_ms, path)
                continue
            record[field.name] = _check_value(value[field.name], field.avro, field.nullable,
                                              path)
        if ev.id_field in record and not isinstance(record[ev.id_field], str):
            raise _refused(f"{where}.{ev.id_field}", "must be a string")
        return record

    def _default(self, field: Field, number: int, now_ms: int, path: str) -> Any:
        ev = self.event
        if field.name == ev.id_field:
            return f"api-{number}"
        if field.name == ev.key_field:
            return ""
        if field.name == ev.timestamp_field:
            return now_ms
        if field.nullable:
            return None
        raise _refused(path, "required by the event schema")

    def json_schema(self, max_abs_value: float | None = None,
                    labels: Sequence[Any] | None = None,
                    max_id_length: int | None = None) -> dict[str, Any]:
        """The JSON Schema of one event (OpenAPI 3.0 dialect). ``max_abs_value`` bounds the
        numeric features (``limits.max_abs_value``); ``labels`` lists the only labels the
        models take, where they take a closed set; ``max_id_length`` bounds the event id
        (``limits.max_event_id_length``)."""
        ev = self.event
        properties = {}
        for f in self.fields:
            schema = _field_schema(f)
            if f.name == ev.id_field and schema.get("type") == "string":
                schema["minLength"] = 1  # an empty id is a dead letter (missing_event_id)
                if max_id_length is not None:  # and a longer one (event_id_too_long)
                    schema["maxLength"] = max_id_length
            elif f.name == ev.label_field and labels is not None:
                schema = {"enum": [*labels, *([None] if f.nullable else [])],
                          **({"nullable": True} if f.nullable else {})}
            elif (max_abs_value is not None and schema.get("type") in ("integer", "number")
                  and f.name not in (ev.timestamp_field, ev.label_field)):
                bound = int(max_abs_value) if schema["type"] == "integer" else max_abs_value
                schema["minimum"] = max(schema.get("minimum", -bound), -bound)
                schema["maximum"] = min(schema.get("maximum", bound), bound)
            properties[f.name] = schema
        required = [f.name for f in self.fields if not f.optional]
        event: dict[str, Any] = {"type": "object", "properties": properties,
                                 "additionalProperties": False}
        if required:
            event["required"] = required
        return event


def _strip_null(avro: Any) -> tuple[Any, bool]:
    if isinstance(avro, list):
        branches = [t for t in avro if t != "null"]
        return (branches[0] if len(branches) == 1 else branches), len(branches) < len(avro)
    return avro, avro == "null"


def _type_name(avro: Any) -> str | None:
    """``double``, ``map``, ``enum``... (logical types and named wrappers unwrapped)."""
    if isinstance(avro, str):
        return avro
    if isinstance(avro, dict):
        return str(avro.get("type"))
    return None


def _refused(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", field=field, reason="decode_error")


def _check_value(value: Any, avro: Any, nullable: bool, path: str) -> Any:
    """``value`` if it can be written as ``avro`` (ApiError otherwise)."""
    if value is None:
        if nullable:
            return None
        raise _refused(path, "must not be null")
    name = _type_name(avro)
    if name in ("int", "long"):
        low, high = _INT_RANGE[name]
        if value.__class__ is not int or not low <= value <= high:
            raise _refused(path, f"must be an integer ({name}), got {_show(value)}")
        return value
    if name in ("float", "double"):
        if value.__class__ not in (int, float) or (
                value.__class__ is int and abs(value) > _MAX_DOUBLE):
            raise _refused(path, f"must be a number, got {_show(value)}")
        return float(value)
    if name == "boolean":
        if value.__class__ is not bool:
            raise _refused(path, f"must be true or false, got {_show(value)}")
        return value
    if name == "string":
        if not isinstance(value, str) or not _encodable(value):
            raise _refused(path, f"must be a (UTF-8) string, got {_show(value)}")
        return value
    if name == "enum":
        if value not in avro.get("symbols", ()):
            raise _refused(path, f"must be one of {list(avro.get('symbols', ()))}")
        return value
    if name == "map":
        if not isinstance(value, dict):
            raise _refused(path, f"must be an object, got {_json_kind(value)}")
        values, inner_nullable = _strip_null(avro.get("values"))
        checked = {}
        for key, item in value.items():
            if not _encodable(key):
                raise _refused(path, f"key {_show(key)} is not a UTF-8 string")
            checked[key] = _check_value(item, values, inner_nullable, f"{path}.{key}")
        return checked
    if name == "array":
        if not isinstance(value, list):
            raise _refused(path, f"must be an array, got {_json_kind(value)}")
        items, inner_nullable = _strip_null(avro.get("items"))
        return [_check_value(v, items, inner_nullable, f"{path}[{i}]")
                for i, v in enumerate(value)]
    raise _refused(path, f"the API cannot take this field's Avro type ({name})")


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800") parses as JSON, not as UTF-8
        return False
    return True


def _show(value: Any) -> str:
    text = json.dumps(value) if _json_kind(value) != "?" else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "?")


def _field_schema(field: Field) -> dict[str, Any]:
    schema = _avro_json_schema(field.avro)
    if field.nullable:
        schema["nullable"] = True
    return schema


def _avro_json_schema(avro: Any) -> dict[str, Any]:
    name = _type_name(avro)
    if name in _JSON_TYPE:
        schema: dict[str, Any] = {"type": _JSON_TYPE[name]}
        if name in _INT_RANGE:
            schema["minimum"], schema["maximum"] = _INT_RANGE[name]
        return schema
    if name == "enum":
        return {"type": "string", "enum": list(avro.get("symbols", ()))}
    if name == "map":
        values, nullable = _strip_null(avro.get("values"))
        inner = _avro_json_schema(values)
        if nullable:
            inner["nullable"] = True
        return {"type": "object", "additionalProperties": inner}
    if name == "array":
        items, nullable = _strip_null(avro.get("items"))
        inner = _avro_json_schema(items)
        if nullable:
            inner["nullable"] = True
        return {"type": "array", "items": inner}
    return {}


# -- requests -----------------------------------------------------------------------------

def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body (ApiError 400 if it is not JSON). ``NaN`` and
    ``Infinity`` are accepted, as Python writes them: a feature that is not finite is then
    refused by the feature validation, with the reason Kafka events get."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
        detail = getattr(exc, "msg", None) or type(exc).__name__
        raise ApiError(400, f"the body is not valid JSON ({detail})", field="body") from None


def predict_events(body: Any, form: EventForm, max_events: int, now_ms: int
                   ) -> list[dict[str, Any]]:
    """The Avro records of a predict request's body: one event (an object) or a list."""
    if isinstance(body, list):
        if not body:
            raise ApiError(400, "the list of events is empty", field="body")
        if len(body) > max_events:
            # 422, not 413: the OpenAPI document declares the list's maxItems, so a longer
            # list is a request the schema refuses (the fuzz test holds the API to that)
            raise ApiError(422, f"{len(body)} events > limit {max_events} per request "
                           "(worker.api_max_events)", field="body")
        items = list(enumerate(body))
        paths = [f"events[{i}]" for i, _ in items]
    elif isinstance(body, dict):
        items, paths = [(0, body)], ["event"]
    else:
        raise ApiError(400, f"the body must be an event (a JSON object) or a list of events, "
                       f"got {_json_kind(body)}", field="body")
    records, errors = [], []
    for (number, value), path in zip(items, paths, strict=True):
        try:
            records.append(form.check(value, path, number, now_ms))
        except ApiError as exc:
            errors.append(exc)
    if errors:
        raise _first_of(errors)
    return records


def _first_of(errors: Sequence[ApiError]) -> ApiError:
    first = errors[0]
    listed = [{"field": e.field, "reason": e.reason, "error": str(e)} for e in errors[:20]]
    return ApiError(first.status, str(first), field=first.field, reason=first.reason,
                    errors=listed)


@dataclasses.dataclass(frozen=True)
class HistoryQuery:
    """``GET /models/{name}/history`` parameters."""

    from_seq: int = 0
    lineage: int | None = None
    after: int = -1
    limit: int = 100


#: Largest ``limit`` of one history page.
MAX_HISTORY_PAGE = 1000


def history_query(query: Mapping[str, str]) -> HistoryQuery:
    """Parse and check the history page's query string (ApiError 400 naming the parameter)."""
    known = {"from_seq", "lineage", "after", "limit"}
    for name in query:
        if name not in known:
            raise ApiError(400, f"unknown query parameter {name!r}", field=name)
    values: dict[str, int] = {}
    bounds = {"from_seq": (0, 2**63 - 1), "lineage": (0, 2**63 - 1), "after": (-1, 2**63 - 1),
              "limit": (1, MAX_HISTORY_PAGE)}
    for name, (low, high) in bounds.items():
        if name in query:
            values[name] = _int_param(query[name], name, low, high)
    return HistoryQuery(**values)  # type: ignore[arg-type]


def series_query(query: Mapping[str, str], max_points: int) -> tuple[int, int]:
    """``GET /models/{name}/metrics``: ``(since time ms, limit)``."""
    for name in query:
        if name not in ("since", "limit"):
            raise ApiError(400, f"unknown query parameter {name!r}", field=name)
    since = _int_param(query["since"], "since", 0, 2**63 - 1) if "since" in query else 0
    limit = (_int_param(query["limit"], "limit", 1, max_points) if "limit" in query
             else max_points)
    return since, limit


def _int_param(text: str, name: str, low: int, high: int) -> int:
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise ApiError(400, f"{name} must be an integer, got {text[:40]!r}", field=name)
    value = int(stripped)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", field=name)
    return value


def json_safe(value: Any) -> Any:
    """A prediction as JSON: numpy scalars unwrapped, non-finite floats as null."""
    if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# -- the document -------------------------------------------------------------------------

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request (the field is named)", 401: "Missing or wrong bearer token",
            404: "No such model on this worker", 413: "Body too large",
            415: "The body must be application/json",
            422: "An event does not validate, or the list is longer than maxItems (the "
                 "field and dead-letter reason are named)",
            503: "The model cannot answer now (being restored, or River would learn while "
                 "predicting)"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


_NUMBER_MAP = {"type": "object", "additionalProperties": {"type": "number"}}
_SCALAR = {"nullable": True, "oneOf": [{"type": "boolean"}, {"type": "number"},
                                       {"type": "string"}]}


def _components(form: EventForm, max_events: int, max_abs_value: float | None,
                labels: Sequence[Any] | None, max_id_length: int | None) -> dict[str, Any]:
    entry = {"type": "object", "required": ["offset", "time", "kind", "epoch", "lineage", "seq"],
             "properties": {
                 "offset": {"type": "integer", "description": "first history record"},
                 "time": {"type": "integer", "description": "epoch ms"},
                 "kind": {"type": "string", "enum": [
                     "created", "claimed", "learned", "snapshot", "rollback", "drift",
                     "integrity", "annotation", "ignored"]},
                 "epoch": {"type": "integer"}, "lineage": {"type": "integer"},
                 "seq": {"type": "integer", "description": "model seq after the entry"}},
             "additionalProperties": True}
    version = {"type": "object", "required": ["lineage", "from_seq", "to_seq", "started",
                                              "drifts", "snapshots", "metrics"],
               "properties": {
                   "lineage": {"type": "integer"}, "from_seq": {"type": "integer"},
                   "to_seq": {"type": "integer"}, "started": {"type": "integer"},
                   "drifts": {"type": "integer"}, "snapshots": {"type": "integer"},
                   "reason": {"type": "string", "nullable": True},
                   "metrics": _NUMBER_MAP}, "additionalProperties": True}
    model = {"type": "object",
             "required": ["name", "task", "seq", "lineage", "epoch", "role", "metrics",
                          "version_metrics", "fenced"],
             "properties": {
                 "name": {"type": "string"}, "task": {"type": "string"},
                 "seq": {"type": "integer"}, "lineage": {"type": "integer"},
                 "epoch": {"type": "integer", "nullable": True},
                 "durable_seq": {"type": "integer", "nullable": True},
                 "role": {"type": "string",
                          "enum": ["learner", "standby", "starting", "replica"]},
                 "fenced": {"type": "boolean"},
                 "metrics": _NUMBER_MAP, "version_metrics": _NUMBER_MAP,
                 "drifts": {"type": "integer"}, "partition": {"type": "integer",
                                                              "nullable": True}},
             "additionalProperties": True}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "field", "reason"], "properties": {
                "error": {"type": "string"},
                "field": {"type": "string", "nullable": True},
                "reason": {"type": "string", "nullable": True},
                "errors": {"type": "array", "items": {"type": "object"}}}},
            "Event": form.json_schema(max_abs_value, labels, max_id_length),
            "Events": {"type": "array", "items": _ref("Event"), "minItems": 1,
                       "maxItems": max_events},
            "Prediction": {"type": "object",
                           "required": ["event_id", "prediction", "probabilities"],
                           "properties": {"event_id": {"type": "string"},
                                          "prediction": _SCALAR,
                                          "probabilities": _NUMBER_MAP}},
            "Predictions": {"type": "object",
                            "required": ["model", "model_seq", "lineage", "predictions"],
                            "properties": {
                                "model": {"type": "string"}, "model_seq": {"type": "integer"},
                                "lineage": {"type": "integer"},
                                "untrained": {"type": "boolean"},
                                "predictions": {"type": "array", "items": _ref("Prediction")}}},
            "Model": model,
            "Models": {"type": "object", "required": ["models", "role", "ready"],
                       "properties": {
                           "models": {"type": "array", "items": _ref("Model")},
                           "role": {"type": "string"}, "ready": {"type": "boolean"},
                           "events_per_s": {"type": "number"},
                           "lag": {"type": "integer"}}},
            "HistoryEntry": entry,
            "Version": version,
            "HistoryPage": {"type": "object",
                            "required": ["model", "entries", "versions", "next_after",
                                         "complete"],
                            "properties": {
                                "model": {"type": "string"},
                                "entries": {"type": "array", "items": _ref("HistoryEntry")},
                                "versions": {"type": "array", "items": _ref("Version")},
                                "next_after": {"type": "integer", "nullable": True},
                                "dropped": {"type": "integer"},
                                "complete": {"type": "boolean"}}},
            "Series": {"type": "object", "required": ["model", "points"], "properties": {
                "model": {"type": "string"},
                "points": {"type": "array", "items": {
                    "type": "object", "required": ["time", "seq", "lineage", "kind"],
                    "properties": {"time": {"type": "integer"}, "seq": {"type": "integer"},
                                   "lineage": {"type": "integer"},
                                   "kind": {"type": "string"},
                                   "metrics": _NUMBER_MAP, "version_metrics": _NUMBER_MAP,
                                   "events_per_s": {"type": "number"},
                                   "consumer_lag": {"type": "integer"}}}}}},
            "Health": {"type": "object", "required": ["alive"],
                       "properties": {"alive": {"type": "boolean"}}},
            "Readiness": {"type": "object", "required": ["ready", "checks"], "properties": {
                "ready": {"type": "boolean"},
                "checks": {"type": "object", "additionalProperties": True}}},
        },
    }


def openapi_document(form: EventForm, model_names: Sequence[str], *, max_events: int,
                     max_body_bytes: int, max_points: int, token_required: bool,
                     max_abs_value: float | None = None, labels: Sequence[Any] | None = None,
                     max_id_length: int | None = None,
                     version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.0 document of the worker's API (served at ``/openapi.json``):
    ``model_names`` the models served, ``labels`` the labels they all take (if a closed
    set), ``max_abs_value`` the features' bound, ``max_id_length`` the event id's."""
    name = {"name": "name", "in": "path", "required": True,
            "description": "A model this worker serves (``GET /models``)",
            "schema": {"type": "string", **({"enum": list(model_names)} if model_names else {})}}
    anonymous: list[Any] = []
    body = {"required": True, "description": f"one event or a list of 1-{max_events}; at most "
            f"{max_body_bytes} bytes", "content": {"application/json": {"schema": {
                "oneOf": [_ref("Event"), _ref("Events")]}}}}
    integer = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    paths = {
        "/healthz": {"get": {"summary": "The worker process answers", "security": anonymous,
                             "responses": {"200": _json(_ref("Health"), "alive")}}},
        "/readyz": {"get": {
            "summary": "Ready to serve: broker connected, models restored",
            "security": anonymous,
            "responses": {"200": _json(_ref("Readiness"), "ready"),
                          "503": _json(_ref("Readiness"), "not ready (see checks)")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": _json({"type": "object"}, "OpenAPI 3 document"), **_errors(401)}}},
        "/models": {"get": {"summary": "The models of this worker", "responses": {
            "200": _json(_ref("Models"), "models"), **_errors(401)}}},
        "/models/{name}/predict": {"post": {
            "summary": "Predict with the live model, without learning or changing it",
            "parameters": [name], "requestBody": body,
            "responses": {"200": _json(_ref("Predictions"), "one prediction per event"),
                          **_errors(400, 401, 404, 413, 415, 422, 503)}}},
        "/models/{name}/history": {"get": {
            "summary": "Versions, snapshots, rollbacks, drift and metrics per version, paged",
            "parameters": [name,
                           {"name": "from_seq", "in": "query", "schema": integer,
                            "description": "entries whose model seq is at least this"},
                           {"name": "lineage", "in": "query", "schema": integer,
                            "description": "entries of this lineage only"},
                           {"name": "after", "in": "query",
                            "schema": {"type": "integer", "minimum": -1,
                                       "maximum": 2**63 - 1},
                            "description": "page cursor: entries after this history offset "
                                           "(``next_after`` of the previous page)"},
                           {"name": "limit", "in": "query", "schema": {
                               "type": "integer", "minimum": 1,
                               "maximum": MAX_HISTORY_PAGE}}],
            "responses": {"200": _json(_ref("HistoryPage"), "a page of the history"),
                          **_errors(400, 401, 404, 503)}}},
        "/models/{name}/metrics": {"get": {
            "summary": "The model's metrics reports over time (riverbed.metrics)",
            "parameters": [name,
                           {"name": "since", "in": "query", "schema": integer,
                            "description": "reports at or after this time (epoch ms)"},
                           {"name": "limit", "in": "query", "schema": {
                               "type": "integer", "minimum": 1, "maximum": max_points}}],
            "responses": {"200": _json(_ref("Series"), "newest reports, oldest first"),
                          **_errors(400, 401, 404, 503)}}},
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "riverbed worker API", "version": version,
                 "description": "Models, predictions and the event-sourced history of one "
                                "riverbed worker."},
        "paths": paths,
        "components": _components(form, max_events, max_abs_value, labels, max_id_length),
    }
    if token_required:
        document["security"] = [{"bearer": []}]
    return document
