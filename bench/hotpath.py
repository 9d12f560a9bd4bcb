"""Hot path, in process, no broker: where riverbed's per-event CPU goes, next to the loop's.

    python bench/hotpath.py                        # 60k events in chunks of 500
    python bench/hotpath.py --model light          # LR alone: the platform's share shows
    python bench/hotpath.py --events 100000 --chunk 1000
    python bench/hotpath.py --window empty         # a worker's first 200,000 events

Runs the same Avro events through several variants, each keeping its own model and state
for the whole run: the hand-written loop's per-event work (decode, extract, predict,
learn, encode: ``bench/baselines.py``'s ``predict_learn``) with fastavro and with
riverbed's cavro codec; the loop that keeps each event's objects until the end of its chunk,
as a batch does (what holding a batch costs by itself); and riverbed's
:class:`InferenceProcessor` -- with everything (dedup, examples, scoring, history records,
plus encoding them as the confirm task does), without encoding the history, without a
learner (no dedup, examples or history), and with its Predictions through the generic Avro
encoder instead of :class:`~riverbed.streams.prediction_codec.PredictionWriter`. The
learners' dedup windows start full (``history.id_window`` ids already learned), as on a
worker that has run for a while: each id learned pushes the oldest out (``--window
empty``: a fresh history).

This host's speed swings within seconds, so the variants take turns chunk by chunk (the
order rotated each chunk) and each chunk's CPU time is compared with riverbed's on the
same chunk: the table gives each variant's 20th percentile and median CPU us per event,
and the median (and quartiles) of its paired difference to riverbed. Prints the table and
writes ``bench/results/hotpath.json``. What this isolates is per-event CPU; fetch, produce
and the event loop are measured end to end by ``bench/throughput.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline_codec import ENV as CODEC_ENV  # noqa: E402
from bench.baselines import kit, predict_learn  # noqa: E402
from bench.throughput import MODELS, bench_settings  # noqa: E402
from riverbed.agents.inference import InferenceProcessor  # noqa: E402
from riverbed.agents.learner import Learner  # noqa: E402
from riverbed.schemas import load_schema  # noqa: E402
from riverbed.streams.codec import AvroCodec  # noqa: E402
from riverbed.streams.config import Settings  # noqa: E402
from riverbed.streams.datasets import events as make_events  # noqa: E402
from riverbed.streams.history_codec import encode_event  # noqa: E402
from riverbed.streams.models import OnlineModel  # noqa: E402

Chunk = Sequence[Any]
Variant = Callable[[Chunk], None]


@dataclasses.dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _records(settings: Settings, n: int) -> list[_Record]:
    codec = AvroCodec(load_schema(settings.event.schema))
    return [_Record(settings.topics.events, 0, i, e["key"].encode(), codec.encode(e))
            for i, e in enumerate(make_events("agrawal", n, seed=3))]


def loop(settings: Settings, codec: str = "fastavro") -> Variant:
    """The hand-written loop's work with ``codec`` for Avro."""
    os.environ[CODEC_ENV] = codec
    decoder, encoder, features, model = kit(settings)

    def run(chunk: Chunk) -> None:
        for record in chunk:
            predict_learn(decoder, encoder, features, model, record.value)
    return run


def loop_keeping(settings: Settings) -> Variant:
    """The same work (cavro), but each event's record, features, probabilities and output
    are kept until the chunk ends, as a batch keeps them until it is published."""
    os.environ[CODEC_ENV] = "riverbed"
    decoder, encoder, features, model = kit(settings)

    def run(chunk: Chunk) -> None:
        kept = []
        for record in chunk:
            event = decoder.decode(record.value)
            x = features.extract(event)
            seq = model.seq
            prediction, proba = model.predict(x)
            if event["label"] is not None:
                model.learn(x, event["label"])
            out = encoder.encode({
                "event_id": event["event_id"], "key": event["key"], "model": model.name,
                "model_seq": seq, "lineage": 0, "prediction": prediction,
                "probabilities": {str(k): v for k, v in proba.items()},
                "event_time": event["timestamp"], "prediction_time": int(time.time() * 1000)})
            kept.append((event, x, proba, out))
    return run


class _Generic:
    """The prediction encoder hidden behind a wrapper, so the processor cannot bypass it."""

    def __init__(self, codec: AvroCodec) -> None:
        self.encode = codec.encode


def riverbed(settings: Settings, history: bool = True, encode: bool = True,
             generic_predictions: bool = False, full_window: bool = True) -> Variant:
    """riverbed's processor (with a learner unless not ``history``), plus encoding its
    history records (unless not ``encode``)."""
    schema = load_schema(settings.event.schema)
    model = OnlineModel(settings.models[0])
    learner = Learner(model, None, None, b"k" * 32,  # type: ignore[arg-type]
                      snapshot_every_steps=10**9, snapshot_every_s=1e9,
                      id_window=settings.history.id_window, probe_size=8) if history else None
    if learner is not None and full_window:  # ids learned long ago, none of them coming again
        learner.fold.recent_ids.extend([f"learned-{i}" for i in range(learner.id_window)])
    predictions = AvroCodec(load_schema("prediction"))
    processor = InferenceProcessor(
        settings, schema, decoder=AvroCodec(schema),
        prediction_encoder=_Generic(predictions) if generic_predictions else predictions,
        models=[model], learners=[learner])

    def run(chunk: Chunk) -> None:
        out = processor.process(chunk)
        if encode:
            for _, events in out.history:
                for event in events:
                    encode_event(event)
    return run


def measure(variants: dict[str, Variant], records: list[_Record], chunk: int
            ) -> dict[str, list[float]]:
    """CPU us per event of every variant on every chunk, taking turns chunk by chunk."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, start in enumerate(range(0, len(records), chunk)):
        part = records[start : start + chunk]
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            began = time.process_time()
            variants[name](part)
            times[name].append((time.process_time() - began) / len(part) * 1e6)
    return times


def _q(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--chunk", type=int, default=500,
                        help="events per turn (riverbed: one batch)")
    parser.add_argument("--model", choices=sorted(MODELS), default="lr")
    parser.add_argument("--window", choices=["full", "empty"], default="full",
                        help="the learners' dedup windows at the start")
    args = parser.parse_args()
    settings = bench_settings(args.model)
    records = _records(settings, args.events)
    full = args.window == "full"
    variants = {
        "loop, fastavro (the baseline)": loop(settings),
        "loop, cavro": loop(settings, "riverbed"),
        "loop, cavro, keeping each event to the chunk's end": loop_keeping(settings),
        "riverbed": riverbed(settings, full_window=full),
        "riverbed, history not encoded": riverbed(settings, encode=False, full_window=full),
        "riverbed, no learner (no dedup, examples, history)": riverbed(settings, history=False),
        "riverbed, generic Prediction encoder": riverbed(settings, generic_predictions=True,
                                                         full_window=full),
    }
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)  # as the worker runs (agents/runtime.py: tune_gc)
    times = measure(variants, records, args.chunk)
    mine = times["riverbed"]
    rows = {}
    for name, values in times.items():
        diffs = sorted(a - b for a, b in zip(values, mine, strict=True))
        rows[name] = {"p20_us": _q(values, 0.2), "median_us": statistics.median(values),
                      "vs_riverbed_median_us": statistics.median(diffs),
                      "vs_riverbed_q1_us": _q(diffs, 0.25), "vs_riverbed_q3_us": _q(diffs, 0.75)}
    print(f"CPU us per event, {len(mine)} chunks of {args.chunk}, model {args.model}, "
          f"dedup window {args.window}")
    print(f"{'variant':<52}{'p20':>8}{'median':>8}   {'minus riverbed, paired median (IQR)'}")
    for name, row in rows.items():
        print(f"{name:<52}{row['p20_us']:>8.1f}{row['median_us']:>8.1f}   "
              f"{row['vs_riverbed_median_us']:+6.1f} ({row['vs_riverbed_q1_us']:+.1f} .. "
              f"{row['vs_riverbed_q3_us']:+.1f})")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "hotpath.json").write_text(json.dumps(
        {"events": args.events, "chunk": args.chunk, "model": args.model,
         "window": args.window,
         "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_us_per_event": rows}, indent=2))


if __name__ == "__main__":
    main()
