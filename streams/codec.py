"""Avro encoding and decoding: plain Avro binary, or Confluent framing with a registry.

* Plain (embedded default): the payload is exactly one Avro record written with the
  topic's schema from ``schemas/``.
* Confluent: ``0x00`` + 4-byte big-endian schema id + Avro record; the writer schema is
  fetched from the registry by id and resolved against the reader schema (evolution).

The Avro engine is cavro, or fastavro where cavro is not installed
(:mod:`streams.avro_backend`). A decode must consume exactly the payload. Every failure --
truncation, trailing bytes, bad union index, unknown schema id -- becomes a
:class:`~streams.errors.DecodeError` with a reason code.

Logical types are stripped from the schemas used on the hot path: timestamps travel
as epoch milliseconds (``int``) inside riverbed, which saves a ``datetime`` per field.
"""

from __future__ import annotations

import json
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from riverbed.streams.avro_backend import (
    DEFAULT_BACKEND,
    Backend,
    RecordReader,
    RecordWriter,
    parse,
    strip_logical_types,
)
from riverbed.streams.errors import DecodeError, SchemaRegistryError

__all__ = ["AvroCodec", "ConfluentCodec", "HttpSchemaRegistry", "InMemorySchemaRegistry",
           "make_codec", "parse", "strip_logical_types"]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class Decoder(Protocol):
    """Turns one message value into one record dict or raises DecodeError."""

    def decode(self, payload: bytes) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Turns one record dict into one message value."""

    def encode(self, record: Mapping[str, Any]) -> bytes: ...


class AvroCodec:
    """Plain Avro binary with one fixed schema (the embedded default)."""

    def __init__(self, schema: Mapping[str, Any], backend: Backend = DEFAULT_BACKEND) -> None:
        self._reader = RecordReader(schema, backend=backend)
        self._writer = RecordWriter(schema, backend)

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode ``payload``; raises DecodeError unless it is exactly one record."""
        return self._reader.read(payload)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` (raises ValueError/TypeError for a record that does not fit)."""
        return self._writer.encode(record)


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
        self, registry: SchemaRegistry, reader_schema: Mapping[str, Any], subject: str,
        backend: Backend = DEFAULT_BACKEND,
    ) -> None:
        self.registry = registry
        self._raw_reader = dict(reader_schema)
        self._backend = backend
        self._writer = RecordWriter(reader_schema, backend)
        self.subject = subject
        self._readers: dict[int, RecordReader] = {}
        self._own_id: int | None = None

    def _reader_for(self, schema_id: int) -> RecordReader:
        reader = self._readers.get(schema_id)
        if reader is None:
            raw = self.registry.schema_by_id(schema_id)
            if raw is None:
                raise DecodeError(f"schema id {schema_id} is unknown", reason="unknown_schema_id")
            try:
                reader = RecordReader(raw, self._raw_reader, self._backend)
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
        return _HEADER.pack(MAGIC_BYTE, self._own_id) + self._writer.encode(record)


def make_codec(
    schema: Mapping[str, Any], subject: str, registry: SchemaRegistry | None = None
) -> AvroCodec | ConfluentCodec:
    """Plain Avro when no registry is configured, Confluent framing otherwise."""
    if registry is None:
        return AvroCodec(schema)
    return ConfluentCodec(registry, schema, subject)
