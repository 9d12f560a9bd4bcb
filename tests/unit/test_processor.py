"""The inference processor: predict then learn, and bad events never touch a model."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from riverbed.agents.inference import InferenceProcessor
from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.models import OnlineModel


@dataclasses.dataclass
class Record:
    value: bytes | None
    offset: int
    key: bytes | None = b"k"
    topic: str = "events"
    partition: int = 0


def make(settings: Settings) -> tuple[InferenceProcessor, AvroCodec, AvroCodec, OnlineModel]:
    schema = load_schema("agrawal_event")
    codec, out = AvroCodec(schema), AvroCodec(load_schema("prediction"))
    model = OnlineModel(settings.models[0])
    return InferenceProcessor(settings, schema, codec, out, [model]), codec, out, model


def probe(model: OnlineModel) -> list[Any]:
    return [model.predict({"salary": float(i * 1000), "age": 20 + i})[1] for i in range(5)]


def test_predicts_before_learning_and_counts(example_settings: Settings) -> None:
    processor, codec, out, model = make(example_settings)
    stream = list(events("agrawal", 50, seed=1))
    result = processor.process([Record(codec.encode(e), i) for i, e in enumerate(stream)])
    predictions = [out.decode(v) for _, v in result.predictions[0]]
    assert [p["model_seq"] for p in predictions] == list(range(50))
    assert [p["event_id"] for p in predictions] == [e["event_id"] for e in stream]
    assert model.seq == 50 and processor.stats.learned[model.name] == 50
    assert not result.dead_letters


def test_bad_events_leave_the_model_untouched(example_settings: Settings) -> None:
    processor, codec, _, model = make(example_settings)
    good = list(events("agrawal", 20, seed=2))
    processor.process([Record(codec.encode(e), i) for i, e in enumerate(good)])
    before, seq = probe(model), model.seq
    bad = [{**good[0], "salary": math.nan}, {**good[0], "loan": math.inf},
           {**good[0], "hvalue": -1e300}, {**good[0], "event_id": ""}]
    records = [Record(codec.encode(e), i) for i, e in enumerate(bad)]
    records += [Record(b"\x01junk", 10), Record(None, 11), Record(codec.encode(good[0]) + b"x", 12)]
    result = processor.process(records)
    assert len(result.dead_letters) == len(records) and not result.predictions
    assert probe(model) == before and model.seq == seq
    assert [d.source_offset for d in result.dead_letters] == [r.offset for r in records]
    assert result.dead_letters[4].value == b"\x01junk"


def test_nan_then_thousand_good_events_gives_only_finite_predictions(
    example_settings: Settings,
) -> None:
    processor, codec, out, _ = make(example_settings)
    stream = list(events("agrawal", 1001, seed=3))
    stream[0] = {**stream[0], "salary": math.nan}
    result = processor.process([Record(codec.encode(e), i) for i, e in enumerate(stream)])
    predictions = [out.decode(v) for _, v in result.predictions[0]]
    assert len(predictions) == 1000 and len(result.dead_letters) == 1
    probabilities = [p for pred in predictions for p in pred["probabilities"].values()]
    assert probabilities and all(math.isfinite(p) for p in probabilities)


def test_per_partition_models_learn_only_their_partition(example_settings: Settings) -> None:
    schema = load_schema("agrawal_event")
    codec, out = AvroCodec(schema), AvroCodec(load_schema("prediction"))
    processor = InferenceProcessor(example_settings, schema, codec, out, [])
    spec = example_settings.models[0]
    shards = {p: OnlineModel(spec, name=f"{spec.name}@p{p}") for p in (0, 1)}
    for partition, model in shards.items():
        processor.add_model(model, partition=partition)
    stream = list(events("agrawal", 30, seed=4))
    records = [Record(codec.encode(e), i, partition=i % 3) for i, e in enumerate(stream)]
    records.sort(key=lambda r: r.partition)  # a fetch returns partitions one after another
    result = processor.process(records)
    for partition, model in shards.items():
        predicted = [out.decode(v) for _, v in result.predictions[partition]]
        assert {p["model"] for p in predicted} == {model.name}
        assert model.seq == len(predicted) == 10
        assert processor.stats.predictions[model.name] == 10
    assert 2 not in result.predictions  # no model serves partition 2: nothing published ...
    assert result.unowned == {f"{records[0].topic}:2"}  # ... and the agent stops loudly
    assert [slot.model for slot in processor.remove_partition(0)] == [shards[0]]
    assert [m.name for m in processor.models] == [shards[1].name]
    assert set(processor.monitors) == {shards[1].name}


def test_scores_are_those_of_the_published_predictions(example_settings: Settings) -> None:
    """Progressive validation scores each learned event with the probabilities it published
    (the lane keeps only P(True) per event for Accuracy and LogLoss)."""
    from riverbed.streams.evaluation import ModelMonitor

    processor, codec, out, model = make(example_settings)
    stream = list(events("agrawal", 400, seed=5))
    expected = ModelMonitor(model.task, model.spec.metrics)
    for start, stop in ((0, 250), (250, 400)):
        chunk = stream[start:stop]
        result = processor.process([Record(codec.encode(e), start + i)
                                    for i, e in enumerate(chunk)])
        published = [out.decode(v) for _, v in result.predictions[0]]
        probas = [{k == "True": p for k, p in r["probabilities"].items()} for r in published]
        expected.update_many([e["label"] for e in chunk], [r["prediction"] for r in published],
                             probas, [0] * len(chunk))
    assert processor.monitors[model.name].scores_p_true
    assert processor.monitors[model.name].values() == expected.values()
    assert processor.monitors[model.name].scored == 400
