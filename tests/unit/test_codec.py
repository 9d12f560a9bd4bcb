"""Avro codec: exact-length decoding, typed errors, Confluent framing, schema evolution."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riverbed.schemas import load_schema, shipped_names
from riverbed.streams.codec import AvroCodec, ConfluentCodec, InMemorySchemaRegistry
from riverbed.streams.errors import DecodeError

EVENT = {"event_id": "e1", "key": "k1", "timestamp": 1_700_000_000_000, "salary": 1.5,
         "commission": 0.0, "age": 30, "elevel": 1, "car": 2, "zipcode": 3, "hvalue": 4.0,
         "hyears": 5, "loan": 6.0, "label": 1}


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(load_schema("agrawal_event"))


def test_every_shipped_schema_parses() -> None:
    for name in shipped_names():
        AvroCodec(load_schema(name))


def test_roundtrip(codec: AvroCodec) -> None:
    assert codec.decode(codec.encode(EVENT)) == EVENT


def test_trailing_bytes_are_rejected(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(codec.encode(EVENT) + b"\x00")
    assert info.value.reason == "trailing_bytes"


@pytest.mark.parametrize("cut", [1, 5, 10, 20])
def test_truncated_input_is_a_decode_error(codec: AvroCodec, cut: int) -> None:
    payload = codec.encode(EVENT)
    with pytest.raises(DecodeError):
        codec.decode(payload[: len(payload) - cut])


def test_empty_payload_is_a_decode_error(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError):
        codec.decode(b"")


def test_v2_record_read_as_v1_is_rejected(codec: AvroCodec) -> None:
    schema_v2 = load_schema("agrawal_event")
    schema_v2["fields"].append({"name": "extra", "type": "double", "default": 0.0})
    payload = AvroCodec(schema_v2).encode({**EVENT, "extra": 2.0})
    with pytest.raises(DecodeError) as info:
        codec.decode(payload)
    assert info.value.reason == "trailing_bytes"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    codec = AvroCodec(load_schema("agrawal_event"))
    try:
        record = codec.decode(payload)
    except DecodeError:
        return
    assert codec.encode(record) == payload  # whatever decodes, decoded the whole payload


def test_confluent_roundtrip_and_wrong_schema_id() -> None:
    registry = InMemorySchemaRegistry()
    codec = ConfluentCodec(registry, load_schema("agrawal_event"), "events-value")
    payload = codec.encode(EVENT)
    assert payload[0] == 0
    assert codec.decode(payload) == EVENT
    wrong = payload[:1] + struct.pack(">I", 999) + payload[5:]
    with pytest.raises(DecodeError) as info:
        codec.decode(wrong)
    assert info.value.reason == "unknown_schema_id"


def test_confluent_missing_magic_byte() -> None:
    codec = ConfluentCodec(InMemorySchemaRegistry(), load_schema("agrawal_event"), "s")
    with pytest.raises(DecodeError) as info:
        codec.decode(b"\x01\x00\x00\x00\x01abc")
    assert info.value.reason == "bad_framing"


def test_confluent_resolves_writer_v2_against_reader_v1() -> None:
    registry = InMemorySchemaRegistry()
    schema_v2 = load_schema("agrawal_event")
    schema_v2["fields"].append({"name": "extra", "type": "double", "default": 0.0})
    writer = ConfluentCodec(registry, schema_v2, "events-value")
    reader = ConfluentCodec(registry, load_schema("agrawal_event"), "events-value")
    assert reader.decode(writer.encode({**EVENT, "extra": 2.0})) == EVENT
