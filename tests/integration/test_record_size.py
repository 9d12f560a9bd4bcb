"""A model with many features learns at the default batch size on every broker.

One batch's history record holds every learned example's features (8 bytes each), and its
pending-log record every unlabelled one's: with 200 features a batch of 2,000 makes records
of several MiB, above Apache Kafka's 1 MiB default for a topic's records. riverbed creates
its own topics for the records it can write (``streams/topics.py: record_bytes_bound``)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.history import Learned
from riverbed.streams.history_codec import encode_event
from riverbed.streams.replay import read_model_history
from tests.helpers import provision, running_worker, send_raw, until

pytestmark = pytest.mark.integration
WIDTH = 200


def _wide_schema(path: Path) -> str:
    path.write_text(json.dumps({
        "type": "record", "name": "Wide", "namespace": "riverbed.tests",
        "fields": [{"name": "event_id", "type": "string"}, {"name": "key", "type": "string"},
                   {"name": "timestamp", "type": "long"},
                   *({"name": f"f{i}", "type": "double"} for i in range(WIDTH)),
                   {"name": "label", "type": ["null", "int"], "default": None}]}))
    return str(path)


async def test_a_wide_model_learns_full_batches_and_restarts_from_its_history(
        settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(
        settings, event=dataclasses.replace(settings.event,
                                            schema=_wide_schema(tmp_path / "wide.avsc")),
        limits=dataclasses.replace(settings.limits, max_features=256))  # the default
    await provision(settings)
    codec = AvroCodec(load_schema(settings.event.schema))
    rng = random.Random(7)
    stream = [{"event_id": f"w{i}", "key": "k", "timestamp": i,
               **{f"f{j}": rng.random() for j in range(WIDTH)},
               "label": None if i % 2 else (i // 2) % 2} for i in range(4000)]
    labelled = sum(e["label"] is not None for e in stream)
    name = settings.models[0].name
    # a backlog first: the worker reads it in full batches (while the events were still
    # being sent, its batches were as large as what had arrived)
    await send_raw(settings, [(b"k", codec.encode(e)) for e in stream])
    async with running_worker(settings) as worker:
        learner = worker.learners[0]
        await until(lambda: learner.durable_seq >= labelled, 120)
        assert worker.join is not None and len(worker.join.store.events) == 4000 - labelled
    history = await read_model_history(settings, name)
    sizes = [len(encode_event(e)) for e in history if isinstance(e.body, Learned)]
    assert max(sizes) > 2**20, sizes  # Kafka refuses records over 1 MiB by default
    async with running_worker(settings) as again:  # restores from those records
        assert again.learners[0].fold.seq == labelled
        assert again.join is not None and len(again.join.store.events) == 4000 - labelled
