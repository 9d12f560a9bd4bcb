"""Avro encoding of history events (``schemas/history_event.avsc``)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import fastavro

from schemas import load_schema
from streams.codec import parse
from streams.errors import DecodeError
from streams.history import (
    Annotated, Claimed, Created, Example, HistoryEvent, Learned, Restored, SnapshotChunk,
)

_SCHEMA = parse(load_schema("history_event"))
_NAMES = {Created: "riverbed.Created", Claimed: "riverbed.Claimed", Learned: "riverbed.Learned",
          SnapshotChunk: "riverbed.SnapshotChunk", Restored: "riverbed.Restored",
          Annotated: "riverbed.Annotated"}
_TYPES = {v: k for k, v in _NAMES.items()}
#: Kafka header carrying the body kind, so followers can skip payloads cheaply.
KIND_HEADER = "riverbed.kind"


def kind_of(event: HistoryEvent) -> str:
    """``Learned``, ``Claimed``, ... for headers and tables."""
    return type(event.body).__name__


def _body_dict(body: Any) -> dict[str, Any]:
    if isinstance(body, Learned):
        return {"seq_from": body.seq_from, "seq_to": body.seq_to, "offsets": dict(body.offsets),
                "examples": [{"event_id": e.event_id, "x": e.x, "y": e.y} for e in body.examples],
                "fingerprint": body.fingerprint}
    if isinstance(body, Created):
        return {**dataclasses.asdict(body), "probe": [dict(p) for p in body.probe]}
    return dataclasses.asdict(body)


def encode_event(event: HistoryEvent) -> bytes:
    """Avro bytes of ``event``."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _SCHEMA, {
        "model": event.model, "epoch": event.epoch, "time": event.time,
        "body": (_NAMES[type(event.body)], _body_dict(event.body))})
    return buffer.getvalue()


def decode_event(payload: bytes, offset: int = -1) -> HistoryEvent:
    """A history event from Avro bytes (DecodeError if it is not one)."""
    buffer = io.BytesIO(payload)
    try:
        raw = fastavro.schemaless_reader(buffer, _SCHEMA, None, return_record_name=True)
    except Exception as exc:
        raise DecodeError(f"not a history event: {exc}") from exc
    if buffer.tell() != len(payload):
        raise DecodeError("trailing bytes after history event", reason="trailing_bytes")
    name, body = raw["body"]
    cls = _TYPES[name]
    if cls is Learned:
        examples = tuple(Example(e["event_id"], e["x"], e["y"]) for e in body["examples"])
        value: Any = Learned(body["seq_from"], body["seq_to"], body["offsets"], examples,
                             body["fingerprint"])
    elif cls is Created:
        value = Created(body["spec"], body["spec_hash"], body["river_version"],
                        tuple(body["probe"]))
    else:
        value = cls(**body)
    return HistoryEvent(raw["model"], raw["epoch"], raw["time"], value, offset)
