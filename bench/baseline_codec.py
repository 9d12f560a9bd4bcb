"""The baselines' Avro codec: fastavro, as a hand-written loop or quixstreams would use it.

riverbed decodes with cavro (``streams/avro_backend.py``); the baselines of
``bench/throughput.py`` and ``bench/hotpath.py`` use riverbed's codec on its fastavro engine
(same exact-length checks) unless run with ``--baseline-codec riverbed`` (env
``RIVERBED_BENCH_BASELINE_CODEC``), which gives them cavro too and so isolates what
riverbed's per-event work costs with the codec equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from riverbed.streams.avro_backend import DEFAULT_BACKEND
from riverbed.streams.codec import AvroCodec

ENV = "RIVERBED_BENCH_BASELINE_CODEC"
CHOICES = ("fastavro", "riverbed")


def baseline_codec(schema: Mapping[str, Any]) -> AvroCodec:
    """The codec the baselines use in this run (see the module docstring)."""
    choice = os.environ.get(ENV, "fastavro")
    if choice not in CHOICES:
        raise SystemExit(f"{ENV}={choice!r}: choose one of {', '.join(CHOICES)}")
    return AvroCodec(schema, backend="fastavro" if choice == "fastavro" else DEFAULT_BACKEND)
