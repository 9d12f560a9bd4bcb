"""The baselines' Avro codec: fastavro, as a hand-written loop or quixstreams would use it.

riverbed decodes with cavro (``streams/codec.py``); the baselines of ``bench/throughput.py``
and ``bench/hotpath.py`` use this fastavro codec unless run with ``--baseline-codec
riverbed`` (env ``RIVERBED_BENCH_BASELINE_CODEC``), which gives them riverbed's codec and so
isolates what riverbed's per-event work costs with the codec equal. Like riverbed's codec it
refuses trailing bytes, so both do the same checks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import fastavro

from streams.codec import AvroCodec, parse

ENV = "RIVERBED_BENCH_BASELINE_CODEC"
CHOICES = ("fastavro", "riverbed")


class FastavroCodec:
    """Plain Avro binary through fastavro's schemaless reader and writer."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = parse(schema)

    def decode(self, payload: bytes) -> dict[str, Any]:
        buffer = io.BytesIO(payload)
        record: dict[str, Any] = fastavro.schemaless_reader(buffer, self.schema, None)
        if buffer.tell() != len(payload):
            raise ValueError("trailing bytes")
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.schema, dict(record))
        return buffer.getvalue()


def baseline_codec(schema: Mapping[str, Any]) -> FastavroCodec | AvroCodec:
    """The codec the baselines use in this run (see the module docstring)."""
    choice = os.environ.get(ENV, "fastavro")
    if choice not in CHOICES:
        raise SystemExit(f"{ENV}={choice!r}: choose one of {', '.join(CHOICES)}")
    return FastavroCodec(schema) if choice == "fastavro" else AvroCodec(schema)
