"""Avro encoding and decoding: plain Avro binary, or Confluent framing with a registry.

* Plain (embedded default): the payload is exactly one Avro record written with the
  topic's schema from ``schemas/``.
* Confluent: ``0x00`` + 4-byte big-endian schema id + Avro record; the writer schema is
  fetched from the registry by id and resolved against the reader schema (evolution).

A decode must consume exactly the payload: fastavro happily ignores trailing bytes
(and so reads a v2 record as v1), so every decoder checks the final position. Every
failure -- truncation, trailing bytes, bad union index, unknown schema id -- becomes a
:class:`~streams.errors.DecodeError` with a reason code.

Logical types are stripped from the schemas used on the hot path: timestamps travel
as epoch milliseconds (``int``) inside riverbed, which saves a ``datetime`` per field.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import fastavro
from fastavro.types import Schema

from streams.errors import DecodeError, SchemaRegistryError

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


def _read_exact(payload: bytes, start: int, writer: Schema, reader: Schema | None) -> Any:
    buffer = io.BytesIO(payload)
    buffer.seek(start)
    try:
        record = fastavro.schemaless_reader(buffer, writer, reader)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
        raise DecodeError(f"not a valid Avro record: {type(exc).__name__}: {exc}") from exc
    consumed = buffer.tell()
    if consumed != len(payload):
        raise DecodeError(
            f"record ended at byte {consumed} of {len(payload)}: trailing bytes "
            "(wrong schema or wrong schema version)",
            reason="trailing_bytes",
        )
    if not isinstance(record, dict):
        raise DecodeError(f"expected a record, got {type(record).__name__}")
    return record


class AvroCodec:
    """Plain Avro binary with one fixed schema (the embedded default)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = parse(schema)

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode ``payload``; raises DecodeError unless it is exactly one record."""
        record: dict[str, Any] = _read_exact(payload, 0, self.schema, None)
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` (raises ValueError/TypeError for a record that does not fit)."""
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.schema, dict(record))
        return buffer.getvalue()


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
        self.reader = parse(reader_schema)
        self._raw_reader = dict(reader_schema)
        self.subject = subject
        self._writers: dict[int, Schema] = {}
        self._own_id: int | None = None

    def _writer(self, schema_id: int) -> Schema:
        writer = self._writers.get(schema_id)
        if writer is None:
            raw = self.registry.schema_by_id(schema_id)
            if raw is None:
                raise DecodeError(f"schema id {schema_id} is unknown", reason="unknown_schema_id")
            writer = self._writers[schema_id] = parse(raw)
        return writer

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode a framed payload, resolving the writer schema against the reader schema."""
        if len(payload) < _HEADER.size or payload[0] != MAGIC_BYTE:
            raise DecodeError("missing Confluent magic byte / schema id", reason="bad_framing")
        _, schema_id = _HEADER.unpack_from(payload)
        record: dict[str, Any] = _read_exact(
            payload, _HEADER.size, self._writer(schema_id), self.reader
        )
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode with the reader schema, registering it on first use."""
        if self._own_id is None:
            self._own_id = self.registry.register(self.subject, self._raw_reader)
        buffer = io.BytesIO()
        buffer.write(_HEADER.pack(MAGIC_BYTE, self._own_id))
        fastavro.schemaless_writer(buffer, self.reader, dict(record))
        return buffer.getvalue()


def make_codec(
    schema: Mapping[str, Any], subject: str, registry: SchemaRegistry | None = None
) -> AvroCodec | ConfluentCodec:
    """Plain Avro when no registry is configured, Confluent framing otherwise."""
    if registry is None:
        return AvroCodec(schema)
    return ConfluentCodec(registry, schema, subject)
