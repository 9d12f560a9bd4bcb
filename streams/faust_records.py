"""Faust types for riverbed's public output topics, for downstream Faust apps.

A Faust app consumes riverbed's predictions (or metrics and drift reports) with an
ordinary ``@app.agent``; importing this module registers the Avro codecs the types name::

    import faust
    from riverbed.streams.faust_records import Prediction

    app = faust.App("alerts", broker="kafka://127.0.0.1:9092")
    predictions = app.topic("riverbed.predictions", value_type=Prediction)

    @app.agent(predictions)
    async def alert(stream):
        async for p in stream:
            ...  # p.event_id, p.model, p.model_seq, p.prediction, p.probabilities

Delivery guarantee: whatever the topic holds. Predictions are at-least-once under the
default guarantee (deduplicate on ``(event_id, model)``); metrics reports are best effort.
The codecs read plain Avro, what riverbed writes when no schema registry is configured.
"""

# no ``from __future__ import annotations``: Faust reads these annotations at runtime
from typing import Any

import faust
from faust.serializers import codecs

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec

#: codec names registered with Faust by importing this module
PREDICTION_CODEC = "riverbed_prediction"
METRICS_REPORT_CODEC = "riverbed_metrics_report"


class AvroRecordCodec(codecs.Codec):
    """A Faust codec for one of riverbed's Avro schemas (``schemas/<name>.avsc``)."""

    def __init__(self, schema: str, **kwargs: Any) -> None:
        self._avro = AvroCodec(load_schema(schema))
        super().__init__(schema=schema, **kwargs)

    def _loads(self, s: bytes) -> Any:
        return self._avro.decode(s)

    def _dumps(self, s: Any) -> bytes:
        return self._avro.encode(s)


class Prediction(faust.Record, serializer=PREDICTION_CODEC):
    """One model's prediction for one event (``schemas/prediction.avsc``), made before the
    model learned that event's label."""

    event_id: str
    key: str
    model: str
    #: learn steps applied to the model state that made this prediction
    model_seq: int
    #: rollbacks the model state has been through (0: the original line)
    lineage: int
    #: the class (classifiers) or value (regressors); None if the model cannot predict yet
    prediction: Any
    #: class (as a string) -> probability; empty for regressors
    probabilities: dict[str, float]
    #: milliseconds since the epoch
    event_time: int
    prediction_time: int


class MetricsReport(faust.Record, serializer=METRICS_REPORT_CODEC):
    """A worker's periodic report on one model (``schemas/metrics_report.avsc``);
    ``kind`` is ``report``, or ``drift`` when the model's drift detector fired."""

    model: str
    kind: str
    time: int
    worker: str
    seq: int
    lineage: int
    events: int
    predictions: int
    learned: int
    dead_letters: int
    labels_joined: int
    pending: int
    expired: int
    drift_events: int
    metrics: dict[str, float]
    version_metrics: dict[str, float]
    label_delay_p50_ms: float
    label_delay_p99_ms: float
    events_per_s: float
    consumer_lag: int


codecs.register(PREDICTION_CODEC, AvroRecordCodec("prediction"))
codecs.register(METRICS_REPORT_CODEC, AvroRecordCodec("metrics_report"))
