"""The two Avro engines behind :mod:`streams.codec`: cavro (default) and fastavro.

* **cavro** (compiled Avro) decodes the demo event in about half fastavro's time. Its
  1.0 release ships wheels for CPython 3.8-3.12; where it is not installed, riverbed runs
  on fastavro, with the same results (the property tests in
  ``tests/unit/test_codec_reference.py`` hold the two to the same bytes and records).
* **fastavro** validates every schema (both engines) and is the reference.

Both readers refuse a payload that is not exactly one record. Avro readers ignore
trailing bytes (and so read a v2 record as v1); fastavro's position is checked after the
read. cavro hides its position, so its reader decodes payload + a 16-byte end marker
(random per process) as the record with one extra ``fixed`` field: the marker comes back
intact only when the record ended exactly at the end of the payload, and a truncated
payload leaves fewer than 16 bytes for it (EOF).
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping
from typing import Any, Literal

import fastavro
from fastavro.types import Schema

from riverbed.streams.errors import ConfigError, DecodeError

try:
    import cavro
except ImportError:  # no cavro wheel for this Python: fastavro does everything
    cavro = None

Backend = Literal["cavro", "fastavro"]
DEFAULT_BACKEND: Backend = "fastavro" if cavro is None else "cavro"
_END_FIELD = "riverbed_end_marker__"
_END = os.urandom(16)


def strip_logical_types(schema: Any) -> Any:
    """A deep copy of ``schema`` without ``logicalType`` annotations (same binary layout)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return copy.copy(schema)


def parse(schema: Mapping[str, Any]) -> Schema:
    """Parse (and validate) a schema for fastavro with logical types stripped."""
    return fastavro.parse_schema(strip_logical_types(dict(schema)))


def ints_as_longs(schema: Any) -> Any:
    """``schema`` with every ``int`` read as ``long`` (same binary layout). cavro wraps an
    ``int`` varint that overflows 32 bits (a damaged payload) into a plausible value;
    read as a long it comes back as written, out of range, as fastavro returns it --
    and the feature validator refuses it (``limits.max_abs_value``)."""
    if schema == "int":
        return "long"
    if isinstance(schema, list):
        return [ints_as_longs(member) for member in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kind = out.get("type")
    if kind in ("record", "error"):
        out["fields"] = [{**f, "type": ints_as_longs(f["type"])} for f in out["fields"]]
    elif kind == "array":
        out["items"] = ints_as_longs(out["items"])
    elif kind == "map":
        out["values"] = ints_as_longs(out["values"])
    else:
        out["type"] = ints_as_longs(kind)
    return out


def _cavro_schema(schema: Mapping[str, Any], end_marker: bool = False,
                  read: bool = False) -> Any:
    if cavro is None:
        raise ConfigError("avro backend", "cavro is not installed (pip install cavro)")
    source = strip_logical_types(dict(schema))
    if read:
        source = ints_as_longs(source)
    if end_marker:
        if source.get("type") != "record":
            raise ConfigError("schema", f"{source.get('name')!r}: a topic schema must be a record")
        marker = {"type": "fixed", "name": "riverbed.internal.EndMarker", "size": len(_END)}
        source["fields"] = [*source["fields"], {"name": _END_FIELD, "type": marker}]
    try:
        return cavro.Schema(source, options=cavro.DEFAULT_OPTIONS.replace(
            record_decodes_to_dict=True, logical_types=()))
    except Exception as exc:  # cavro is stricter than fastavro about a few names
        raise ConfigError("schema", f"{source.get('name')!r} not usable: {exc}") from exc


class RecordReader:
    """Decodes one payload that must be exactly one record (see the module docstring)."""

    def __init__(self, writer: Mapping[str, Any], reader: Mapping[str, Any] | None = None,
                 backend: Backend = DEFAULT_BACKEND) -> None:
        self._fastavro: tuple[Schema, Schema | None] | None = None
        self._cavro: Any = None
        parsed = (parse(writer), None if reader is None else parse(reader))
        if backend == "fastavro":
            self._fastavro = parsed
        else:
            schema = _cavro_schema(writer, end_marker=True, read=True)
            if reader is not None:
                # resolvable as declared (ints read as longs would also accept long -> int)
                _cavro_schema(reader).reader_for_writer(_cavro_schema(writer))
                schema = _cavro_schema(reader, end_marker=True, read=True
                                       ).reader_for_writer(schema)
            self._cavro = schema

    def read(self, payload: bytes, start: int = 0) -> dict[str, Any]:
        """The record in ``payload[start:]``; DecodeError unless it is exactly one record."""
        if self._fastavro is not None:
            return _read_fastavro(payload, start, *self._fastavro)
        body = payload[start:] if start else payload
        try:
            record: dict[str, Any] = self._cavro.binary_decode(body + _END)
        except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, ...
            raise DecodeError(f"not a valid Avro record: {type(exc).__name__}: {exc}") from exc
        if record.pop(_END_FIELD) != _END:
            raise _trailing(f"bytes left after the record in a {len(payload)}-byte payload")
        return record


def _trailing(where: str) -> DecodeError:
    return DecodeError(f"{where}: trailing bytes (wrong schema or wrong schema version)",
                       reason="trailing_bytes")


def _read_fastavro(payload: bytes, start: int, writer: Schema, reader: Schema | None
                   ) -> dict[str, Any]:
    buffer = io.BytesIO(payload)
    buffer.seek(start)
    try:
        record = fastavro.schemaless_reader(buffer, writer, reader)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
        raise DecodeError(f"not a valid Avro record: {type(exc).__name__}: {exc}") from exc
    if buffer.tell() != len(payload):
        raise _trailing(f"record ended at byte {buffer.tell()} of {len(payload)}")
    if not isinstance(record, dict):
        raise DecodeError(f"expected a record, got {type(record).__name__}")
    return record


class RecordWriter:
    """Encodes records of one schema (ValueError/TypeError for a record that does not fit)."""

    def __init__(self, schema: Mapping[str, Any], backend: Backend = DEFAULT_BACKEND) -> None:
        self._parsed = parse(schema)
        self._cavro = None if backend == "fastavro" else _cavro_schema(schema)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The Avro binary of ``record``."""
        if self._cavro is not None:
            encoded: bytes = self._cavro.binary_encode(record)
            return encoded
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self._parsed, dict(record))
        return buffer.getvalue()
