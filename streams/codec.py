"""Avro encoding and decoding: plain Avro binary, or Confluent framing with a registry.

* Plain (embedded default): the payload is exactly one Avro record written with the
  topic's schema from ``schemas/``.
* Confluent: ``0x00`` + 4-byte big-endian schema id + Avro record; the writer schema is
  fetched from the registry by id and resolved against the reader schema (evolution).

The hot path runs on cavro (compiled Avro; about half fastavro's time per decode on the
demo event, measured in ``bench/hotpath.py``); fastavro parses and validates schemas and
stays the reference codec that the property tests compare cavro against byte for byte.

A decode must consume exactly the payload: Avro readers happily ignore trailing bytes
(and so read a v2 record as v1). cavro does not expose its read position, so every
decoder reads the payload followed by a 16-byte end marker (random per process) as a
record with one extra ``fixed`` field: the marker comes back intact only when the record
ended exactly at the end of the payload; a truncated payload leaves fewer than 16 bytes for
it (EOF). Every failure -- truncation, trailing bytes, bad union index, unknown schema id
-- becomes a :class:`~streams.errors.DecodeError` with a reason code.

Logical types are stripped from the schemas used on the hot path: timestamps travel
as epoch milliseconds (``int``) inside riverbed, which saves a ``datetime`` per field.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import cavro
import fastavro
from fastavro.types import Schema

from streams.errors import ConfigError, DecodeError, SchemaRegistryError

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


def strip_logical_types(schema: Any) -> Any:
    """A deep copy of ``schema`` without ``logicalType`` annotations (same binary layout)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return copy.copy(schema)


def parse(schema: Mapping[str, Any]) -> Schema:
    """Parse a schema for fastavro with logical types stripped."""
    return fastavro.parse_schema(strip_logical_types(dict(schema)))


class Decoder(Protocol):
    """Turns one message value into one record dict or raises DecodeError."""

    def decode(self, payload: bytes) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Turns one record dict into one message value."""

    def encode(self, record: Mapping[str, Any]) -> bytes: ...


_OPTIONS = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True, logical_types=())
_END_FIELD = "riverbed_end_marker__"
_END = os.urandom(16)


def _compile(schema: Mapping[str, Any], end_marker: bool = False) -> Any:
    """A cavro schema for ``schema`` (validated by fastavro first), optionally end-marked."""
    parse(schema)
    source = strip_logical_types(dict(schema))
    if end_marker:
        if source.get("type") != "record":
            raise ConfigError("schema", f"{source.get('name')!r}: a topic schema must be a record")
        marker = {"type": "fixed", "name": "riverbed.internal.EndMarker", "size": len(_END)}
        source["fields"] = [*source["fields"], {"name": _END_FIELD, "type": marker}]
    try:
        return cavro.Schema(source, options=_OPTIONS)
    except Exception as exc:  # cavro is stricter than fastavro about a few names
        raise ConfigError("schema", f"{source.get('name')!r} not usable: {exc}") from exc


class _ExactReader:
    """Decodes one payload that must be exactly one record (see the module docstring)."""

    def __init__(self, writer: Mapping[str, Any], reader: Mapping[str, Any] | None = None):
        schema = _compile(writer, end_marker=True)
        if reader is not None:
            schema = _compile(reader, end_marker=True).reader_for_writer(schema)
        self._schema = schema

    def read(self, payload: bytes, start: int = 0) -> dict[str, Any]:
        body = payload[start:] if start else payload
        try:
            record: dict[str, Any] = self._schema.binary_decode(body + _END)
        except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, ...
            raise DecodeError(f"not a valid Avro record: {type(exc).__name__}: {exc}") from exc
        if record.pop(_END_FIELD) != _END:
            raise DecodeError(
                f"bytes left after the record in a {len(payload)}-byte payload: trailing "
                "bytes (wrong schema or wrong schema version)",
                reason="trailing_bytes",
            )
        return record


class AvroCodec:
    """Plain Avro binary with one fixed schema (the embedded default)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._reader = _ExactReader(schema)
        self._writer = _compile(schema)

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode ``payload``; raises DecodeError unless it is exactly one record."""
        return self._reader.read(payload)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` (raises ValueError/TypeError for a record that does not fit)."""
        encoded: bytes = self._writer.binary_encode(record)
        return encoded


class SchemaRegistry(Protocol):
    """The two registry calls riverbed needs."""

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any] | None: ...

    def register(self, subject: str, schema: Mapping[str, Any]) -> int: ...


class InMemorySchemaRegistry:
    """A registry held in memory: for tests, tools and single-process setups."""

    def __init__(self) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids: dict[str, int] = {}

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any] | None:
        """The schema registered under ``schema_id``, or None."""
        return self._by_id.get(schema_id)

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` (idempotent) and return its id."""
        text = json.dumps(schema, sort_keys=True)
        if text not in self._ids:
            self._ids[text] = len(self._ids) + 1
            self._by_id[self._ids[text]] = json.loads(text)
        return self._ids[text]


class HttpSchemaRegistry:
    """Client of a Confluent-compatible schema registry (REST); ids are cached forever.

    Lookups are synchronous and happen once per unknown schema id, not per event.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._cache: dict[int, Mapping[str, Any] | None] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            return json.loads(response.read())

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any] | None:
        """Fetch (once) the schema with ``schema_id``; None when the registry has no such id."""
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
        try:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
            schema: Mapping[str, Any] | None = json.loads(answer["schema"])
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise SchemaRegistryError(f"registry answered {exc.code} for id {schema_id}")
            schema = None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(f"registry at {self.url} unreachable: {exc}") from exc
        with self._lock:
            self._cache[schema_id] = schema
        return schema

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` and return its id."""
        try:
            answer = self._call(
                "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}
            )
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(f"cannot register {subject}: {exc}") from exc
        return int(answer["id"])


class ConfluentCodec:
    """Confluent wire format: magic byte, schema id, Avro body; reader/writer resolution."""

    def __init__(
        self, registry: SchemaRegistry, reader_schema: Mapping[str, Any], subject: str
    ) -> None:
        self.registry = registry
        self._raw_reader = dict(reader_schema)
        self._writer = _compile(reader_schema)
        self.subject = subject
        self._readers: dict[int, _ExactReader] = {}
        self._own_id: int | None = None

    def _reader_for(self, schema_id: int) -> _ExactReader:
        reader = self._readers.get(schema_id)
        if reader is None:
            raw = self.registry.schema_by_id(schema_id)
            if raw is None:
                raise DecodeError(f"schema id {schema_id} is unknown", reason="unknown_schema_id")
            try:
                reader = _ExactReader(raw, self._raw_reader)
            except Exception as exc:  # not a record, or not resolvable against the reader
                raise DecodeError(f"schema id {schema_id} cannot be read as "
                                  f"{self._raw_reader.get('name')!r}: {exc}",
                                  reason="incompatible_schema") from exc
            self._readers[schema_id] = reader
        return reader

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode a framed payload, resolving the writer schema against the reader schema."""
        if len(payload) < _HEADER.size or payload[0] != MAGIC_BYTE:
            raise DecodeError("missing Confluent magic byte / schema id", reason="bad_framing")
        _, schema_id = _HEADER.unpack_from(payload)
        return self._reader_for(schema_id).read(payload, _HEADER.size)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode with the reader schema, registering it on first use."""
        if self._own_id is None:
            self._own_id = self.registry.register(self.subject, self._raw_reader)
        body: bytes = self._writer.binary_encode(record)
        return _HEADER.pack(MAGIC_BYTE, self._own_id) + body


def make_codec(
    schema: Mapping[str, Any], subject: str, registry: SchemaRegistry | None = None
) -> AvroCodec | ConfluentCodec:
    """Plain Avro when no registry is configured, Confluent framing otherwise."""
    if registry is None:
        return AvroCodec(schema)
    return ConfluentCodec(registry, schema, subject)
