"""Avro encoding and decoding: plain Avro binary, or Confluent framing with a registry.

* Plain (embedded default): the payload is exactly one Avro record written with the
  topic's schema from ``schemas/``.
* Confluent: ``0x00`` + 4-byte big-endian schema id + Avro record; the writer schema is
  looked up by id and resolved against the reader schema (evolution).

Pure and synchronous: the codec does no I/O. It asks a :class:`SchemaRegistry` for schemas
and ids *from memory*; the async client (:mod:`riverbed.streams.registry`) fetches them
beforehand -- the ids a batch needs (:meth:`ConfluentCodec.unknown_ids`) are prefetched
before the batch is processed, an encoder's own schema is registered before its first
encode. In tests and tools, :class:`InMemorySchemaRegistry` answers directly.

The Avro engine is cavro, or fastavro where cavro is not installed
(:mod:`streams.avro_backend`). A decode must consume exactly the payload. Every failure of
an event -- truncation, trailing bytes, bad union index, a schema id the registry does not
know, a writer schema that does not resolve -- becomes a :class:`~streams.errors.DecodeError`
with a reason code. A registry *outage* never reaches the codec: events wait for it.

Logical types are stripped from the schemas used on the hot path: timestamps travel
as epoch milliseconds (``int``) inside riverbed, which saves a ``datetime`` per field.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from riverbed.streams.avro_backend import (
    DEFAULT_BACKEND,
    Backend,
    RecordReader,
    RecordWriter,
    parse,
    strip_logical_types,
)
from riverbed.streams.errors import DecodeError
from riverbed.streams.schema_cache import BoundedLru, SchemaJson

__all__ = ["AvroCodec", "ConfluentCodec", "InMemorySchemaRegistry", "SchemaRegistry",
           "framed_ids", "make_codec", "parse", "strip_logical_types"]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
#: compiled writer->reader readers a codec keeps (least recently used out first)
MAX_READERS = 1000


class Decoder(Protocol):
    """Turns one message value into one record dict or raises DecodeError."""

    def decode(self, payload: bytes) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Turns one record dict into one message value."""

    def encode(self, record: Mapping[str, Any]) -> bytes: ...


class AvroCodec:
    """Plain Avro binary with one fixed schema (the embedded default)."""

    def __init__(self, schema: Mapping[str, Any], backend: Backend = DEFAULT_BACKEND) -> None:
        #: the schema it reads and writes
        self.schema = schema
        self._reader = RecordReader(schema, backend=backend)
        self._writer = RecordWriter(schema, backend)

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode ``payload``; raises DecodeError unless it is exactly one record."""
        return self._reader.read(payload)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` (raises ValueError/TypeError for a record that does not fit)."""
        return self._writer.encode(record)


class SchemaRegistry(Protocol):
    """What the codec asks of a registry: answers from memory, no I/O."""

    def schema_by_id(self, schema_id: int) -> SchemaJson | None:
        """The writer schema of ``schema_id``; None: the registry has no such id. Raises
        :class:`~streams.errors.SchemaNotLoadedError` if the id was not resolved before."""
        ...

    def id_of(self, subject: str, schema: Mapping[str, Any]) -> int:
        """The id of ``schema`` under ``subject``; raises
        :class:`~streams.errors.SchemaNotLoadedError` if it was not registered before."""
        ...


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

    def id_of(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Same as :meth:`register` (memory only, so registering on the spot is fine)."""
        return self.register(subject, schema)


class ConfluentCodec:
    """Confluent wire format: magic byte, schema id, Avro body; reader/writer resolution.

    Compiled readers (one per writer schema id, or why that id cannot be read) are kept
    for the :data:`MAX_READERS` most recently used ids.
    """

    def __init__(
        self, registry: SchemaRegistry, reader_schema: Mapping[str, Any], subject: str,
        backend: Backend = DEFAULT_BACKEND, max_readers: int = MAX_READERS,
    ) -> None:
        self.registry = registry
        self._raw_reader = dict(reader_schema)
        self._backend = backend
        self._writer = RecordWriter(reader_schema, backend)
        self.subject = subject
        #: schema id -> its reader, or the reason it cannot be read as the reader schema
        self._readers: BoundedLru[int, RecordReader | str] = BoundedLru(max_readers)
        self._own_id: int | None = None

    @property
    def schema(self) -> Mapping[str, Any]:
        """The reader schema: what ``encode`` writes (and registers under ``subject``)."""
        return self._raw_reader

    def unknown_ids(self, payloads: Iterable[bytes | None]) -> set[int]:
        """The schema ids of framed ``payloads`` this codec has no reader for yet: what the
        registry client must prefetch before :meth:`decode` sees these payloads."""
        return {i for i in framed_ids(payloads) if i not in self._readers}

    def _reader_for(self, schema_id: int) -> RecordReader:
        reader = self._readers.get(schema_id)
        if reader is None:
            raw = self.registry.schema_by_id(schema_id)
            if raw is None:  # not remembered: the registry's "missing" answers expire
                raise DecodeError(f"schema id {schema_id} is unknown", reason="unknown_schema_id")
            reader = _compile(raw, self._raw_reader, self._backend, schema_id)
            self._readers.put(schema_id, reader)
        if isinstance(reader, str):
            raise DecodeError(reader, reason="incompatible_schema")
        return reader

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode a framed payload, resolving the writer schema against the reader schema."""
        if len(payload) < _HEADER.size or payload[0] != MAGIC_BYTE:
            raise DecodeError("missing Confluent magic byte / schema id", reason="bad_framing")
        _, schema_id = _HEADER.unpack_from(payload)
        return self._reader_for(schema_id).read(payload, _HEADER.size)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode with the reader schema, under the id it was registered with."""
        if self._own_id is None:  # an id never changes: ask the registry once
            self._own_id = self.registry.id_of(self.subject, self._raw_reader)
        return _HEADER.pack(MAGIC_BYTE, self._own_id) + self._writer.encode(record)


def _compile(writer: SchemaJson, reader: Mapping[str, Any], backend: Backend,
             schema_id: int) -> RecordReader | str:
    """A reader of ``writer``-written records as ``reader``, or why there is none."""
    name = reader.get("name")
    if not isinstance(writer, Mapping) or writer.get("type") != "record":
        return f"schema id {schema_id} is not an Avro record schema; cannot be read as {name!r}"
    try:
        return RecordReader(writer, reader, backend)
    except Exception as exc:  # not resolvable against the reader (either engine's error)
        return f"schema id {schema_id} cannot be read as {name!r}: {exc}"


def framed_ids(payloads: Iterable[bytes | None]) -> set[int]:
    """The schema ids in the Confluent headers of ``payloads`` (unframed ones ignored).

    >>> sorted(framed_ids([b"\\x00\\x00\\x00\\x00\\x07body", b"\\x01plain", None]))
    [7]
    """
    return {_HEADER.unpack_from(p)[1] for p in payloads
            if p is not None and len(p) >= _HEADER.size and p[0] == MAGIC_BYTE}


def make_codec(
    schema: Mapping[str, Any], subject: str, registry: SchemaRegistry | None = None
) -> AvroCodec | ConfluentCodec:
    """Plain Avro when no registry is configured, Confluent framing otherwise."""
    if registry is None:
        return AvroCodec(schema)
    return ConfluentCodec(registry, schema, subject)
