"""Avro encoding of history events (``schemas/history_event.avsc``).

``Learned`` examples are stored column-wise -- event ids, feature names once per batch,
one packed float64 block, labels -- so that encoding on the hot path and decoding during
replay cost a few array operations per batch instead of an Avro map per example.

Every record is signed: an HMAC of its value bytes under the snapshot key travels in the
``riverbed.sig`` header (:func:`record_headers`), and :func:`decode_record` refuses a record
whose signature does not hold before decoding it. Whoever can write to the topic but has
no key cannot make a record any fold applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import struct
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import fastavro

from riverbed.schemas import load_schema
from riverbed.streams import avro_write as avro
from riverbed.streams.codec import parse
from riverbed.streams.errors import DecodeError
from riverbed.streams.history import (
    Annotated,
    Claimed,
    Created,
    Example,
    Examples,
    HistoryEvent,
    Learned,
    Restored,
    SnapshotChunk,
    float_values,
    unpack_rows,
)

_SCHEMA = parse(load_schema("history_event"))
_NAMES = {Created: "riverbed.Created", Claimed: "riverbed.Claimed", Learned: "riverbed.Learned",
          SnapshotChunk: "riverbed.SnapshotChunk", Restored: "riverbed.Restored",
          Annotated: "riverbed.Annotated"}
_TYPES = {v: k for k, v in _NAMES.items()}
#: Kafka header carrying the body kind, so followers can skip payloads cheaply.
KIND_HEADER = "riverbed.kind"
#: Kafka header carrying the record's HMAC (:func:`record_signature`).
SIGNATURE_HEADER = "riverbed.sig"
#: keeps a record signature from ever equalling another signature made with the same key
_SIGNATURE_DOMAIN = b"riverbed.history-record.v1\x00"
#: why :func:`decode_record` refuses a record (``SkippedRecord.reason``)
UNSIGNED_REASON = "not signed with this key"


def kind_of(event: HistoryEvent) -> str:
    """``Learned``, ``Claimed``, ... for headers and tables."""
    return type(event.body).__name__


def encode_columns(examples: Sequence[Example]) -> dict[str, Any]:
    """Examples as the history stores them: ids, feature names, one float64 block, labels.

    Runs once per batch over every learned example, so the dense case (every row has
    the first row's keys in the same order) is checked with C-level maps and packed in one
    call (a flat list through ``struct``: ~40% cheaper than an array fed by an iterator).
    """
    columns = Examples.of(examples)
    if columns.packed is not None and columns.names is not None and columns.ids:  # dense
        return {"event_ids": list(columns.ids), "feature_names": list(columns.names),
                "values": columns.packed, "dense": True, "columns": [],
                "labels": list(columns.ys)}
    xs = columns.xs
    order = list(xs[0]) if xs else []
    dense = all(map(order.__eq__, map(list, xs)))
    rows: list[list[int]] = []
    if dense:
        try:
            flat = list(chain.from_iterable(map(dict.values, xs)))  # type: ignore[arg-type]
        except TypeError:  # rows that are mappings but not dicts
            flat = [v for x in xs for v in x.values()]
    else:  # each row its own values, in column order: never rows x every name
        # (events with distinct map keys would otherwise make n x n values)
        names: dict[str, None] = {}
        for x in xs:
            names.update(dict.fromkeys(x))
        order = list(names)
        position = {n: i for i, n in enumerate(order)}
        flat = []
        for x in xs:
            cols = [position[k] for k in x]
            flat.extend([x[order[c]] for c in sorted(cols)])
            rows.append(cols)
    return {"event_ids": list(columns.ids), "feature_names": order,
            "values": struct.pack(f"<{len(flat)}d", *flat), "dense": dense,
            "columns": rows, "labels": list(columns.ys)}


def decode_columns(body: Mapping[str, Any]) -> Examples:
    """Inverse of :func:`encode_columns` (same key order per row, same floats)."""
    names, ids, labels = body["feature_names"], body["event_ids"], body["labels"]
    values = float_values(body["values"])
    width = len(names)
    if body["dense"]:
        return Examples(ids, unpack_rows(names, values, len(ids)), labels)
    if len(values) == width * len(ids):  # every row at full width (as written before
        rows = (values[i * width : (i + 1) * width] for i in range(len(ids)))  # 2026-12-02)
        return Examples(ids, [{names[c]: row[c] for c in cols}
                              for row, cols in zip(rows, body["columns"])], labels)
    xs, start = [], 0
    for cols in body["columns"]:
        own = dict(zip(sorted(cols), values[start : start + len(cols)]))
        start += len(cols)
        xs.append({names[c]: own[c] for c in cols})
    if start != len(values):
        raise ValueError(f"{len(values)} values for rows holding {start}")
    return Examples(ids, xs, labels)


def _body_dict(body: Any) -> dict[str, Any]:
    if isinstance(body, Learned):
        return {"seq_from": body.seq_from, "seq_to": body.seq_to, "offsets": dict(body.offsets),
                **encode_columns(body.examples), "fingerprint": body.fingerprint}
    if isinstance(body, Created):
        return {**dataclasses.asdict(body), "probe": [dict(p) for p in body.probe]}
    return dataclasses.asdict(body)


def encode_event(event: HistoryEvent) -> bytes:
    """Avro bytes of ``event``. A ``Learned`` (one per batch, every example in it) is
    written directly (:func:`_write_learned`); anything it does not handle, and every
    other body, goes through fastavro -- the same bytes either way."""
    if event.body.__class__ is Learned:
        with contextlib.suppress(TypeError, ValueError, OverflowError, AttributeError):
            return _write_learned(event, event.body)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _SCHEMA, {
        "model": event.model, "epoch": event.epoch, "time": event.time,
        "body": (_NAMES[type(event.body)], _body_dict(event.body))})
    return buffer.getvalue()


def decode_event(payload: bytes, offset: int = -1, *, examples: bool = True) -> HistoryEvent:
    """A history event from Avro bytes (DecodeError if it is not one). With ``examples``
    False a ``Learned`` comes without its examples (for readers that only summarise: the
    per-example work is most of a decode)."""
    buffer = io.BytesIO(payload)
    try:
        raw: Any = fastavro.schemaless_reader(buffer, _SCHEMA, None, return_record_name=True)
    except Exception as exc:
        raise DecodeError(f"not a history event: {exc}") from exc
    if buffer.tell() != len(payload):
        raise DecodeError("trailing bytes after history event", reason="trailing_bytes")
    try:
        name, body = raw["body"]
        cls = _TYPES[name]
        if cls is Learned:
            value: Any = Learned(body["seq_from"], body["seq_to"], body["offsets"],
                                 decode_columns(body) if examples else (),
                                 body["fingerprint"])
        elif cls is Created:
            value = Created(body["spec"], body["spec_hash"], body["river_version"],
                            tuple(body["probe"]))
        else:
            value = cls(**body)
    except Exception as exc:  # a schema-valid record that is not a well-formed event
        raise DecodeError(f"malformed history event: {type(exc).__name__}: {exc}") from exc
    return HistoryEvent(raw["model"], raw["epoch"], raw["time"], value, offset)


def record_signature(value: bytes, key: bytes) -> bytes:
    """HMAC-SHA256 of a history record's value bytes under ``key`` (the snapshot key). The
    value holds the model, epoch, time and body, so all of them are signed; a record
    re-appended verbatim stays authentic, and the fold's rules place it (stale, duplicate)."""
    return hmac.new(key, _SIGNATURE_DOMAIN + value, hashlib.sha256).digest()


def record_headers(event: HistoryEvent, value: bytes, key: bytes) -> list[tuple[str, bytes]]:
    """The headers of ``event``'s record: its kind and its signature."""
    return [(KIND_HEADER, kind_of(event).encode()),
            (SIGNATURE_HEADER, record_signature(value, key))]


def decode_record(value: bytes | None, offset: int,
                  headers: Sequence[tuple[str, bytes | None]] | None, key: bytes | None, *,
                  examples: bool = True) -> HistoryEvent:
    """The history event of one record read from the topic. With ``key``, a record whose
    signature header is missing or does not hold is a DecodeError (:data:`UNSIGNED_REASON`),
    checked before decoding; ``key`` None takes unsigned records
    (``history.accept_unsigned_records``). Otherwise as :func:`decode_event`."""
    payload = value or b""
    if key is not None:
        signature = next((v for k, v in headers or () if k == SIGNATURE_HEADER), None)
        if not (isinstance(signature, bytes) and hmac.compare_digest(
                signature, record_signature(payload, key))):
            raise DecodeError(UNSIGNED_REASON)  # never a dead letter: skipped and counted
    return decode_event(payload, offset, examples=examples)


#: ``labels`` items: union [boolean, long, double, string] -> the branch's index byte
_BOOL_LABEL = {True: b"\x00\x01", False: b"\x00\x00"}
#: the encoded label of each bool and small int, by (class, value): ``True == 1``
_COMMON_LABELS: dict[tuple[type, Any], bytes] = {
    **{(bool, y): code for y, code in _BOOL_LABEL.items()},
    **{(int, y): b"\x02" + avro.long(y) for y in range(-64, 64)}}


def _labels(ys: Sequence[Any]) -> list[bytes]:
    """The encoded ``labels`` items: one dict lookup each for bools and small ints (class
    labels), :func:`_label` for anything else."""
    common = list(map(_COMMON_LABELS.get, zip(map(type, ys), ys)))
    if None in common:
        return [*map(_label, ys)]
    return common  # type: ignore[return-value]  # no None in it


def _label(y: Any) -> bytes:
    kind = y.__class__
    if kind is bool:
        return _BOOL_LABEL[y]
    if kind is int and avro.LONG_MIN <= y <= avro.LONG_MAX:
        return b"\x02" + avro.long(y)
    if kind is float:
        return b"\x04" + avro.DOUBLE(y)
    if kind is str:
        return b"\x06" + avro.string(y)
    raise TypeError(f"label {y!r}: left to fastavro")


def _write_learned(event: HistoryEvent, body: Learned) -> bytes:
    """A ``Learned`` event's Avro bytes without fastavro's walk over every example (its
    union resolution per label was most of the history's encoding cost). Raises
    TypeError/ValueError/OverflowError for what it does not handle."""
    for number in (event.epoch, event.time, body.seq_from, body.seq_to, *body.offsets.values()):
        if number.__class__ is not int or not avro.LONG_MIN <= number <= avro.LONG_MAX:
            raise TypeError("not a long: left to fastavro")
    columns = encode_columns(body.examples)
    values = columns["values"]
    return b"".join((
        avro.string(event.model), avro.long(event.epoch), avro.long(event.time),
        b"\x04",  # body: union branch 2, Learned
        avro.long(body.seq_from), avro.long(body.seq_to),
        avro.block([avro.string(source) + avro.long(offset)
                    for source, offset in body.offsets.items()]),
        avro.block([*map(avro.string, columns["event_ids"])]),
        avro.block([*map(avro.string, columns["feature_names"])]),
        avro.long(len(values)), values, b"\x01" if columns["dense"] else b"\x00",
        avro.block([avro.block([*map(avro.long, row)]) for row in columns["columns"]]),
        avro.block(_labels(columns["labels"])),
        avro.string(body.fingerprint)))
