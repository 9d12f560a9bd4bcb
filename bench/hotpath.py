"""Hot path, in process, no broker: riverbed's per-event CPU cost vs the hand-written loop's.

    python bench/hotpath.py                 # 40k events, batches of 2,000, best of 5 rounds
    python bench/hotpath.py --events 100000 --rounds 7

Runs the same Avro events through (a) the hand-written loop's per-event work (decode,
extract, predict, learn, encode: ``bench/throughput.py``'s ``predict_learn``; with fastavro,
and again with riverbed's cavro codec to show the codec's share) and (b)
riverbed's :class:`InferenceProcessor` with a learner (dedup, examples, scoring, history
records) plus the history encoding the confirm task does afterwards. Rounds are
interleaved and the minimum is reported (this machine is noisy). Prints a table and
writes ``bench/results/hotpath.json``. This isolates what the guarantees cost per event
from fetch/produce/event-loop costs, which ``bench/throughput.py`` measures end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

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


def run_loop(settings: Settings, records: list[_Record], codec: str = "fastavro") -> float:
    """Seconds per event of the hand-written loop's work, with ``codec`` for Avro."""
    os.environ[CODEC_ENV] = codec
    decoder, encoder, features, model = kit(settings)
    began = time.perf_counter()
    for record in records:
        predict_learn(decoder, encoder, features, model, record.value)  # type: ignore[arg-type]
    return (time.perf_counter() - began) / len(records)


def run_riverbed(settings: Settings, records: list[_Record], batch: int,
                 history: bool = True) -> dict[str, float]:
    """Seconds per event of process() and of encoding its history records."""
    from riverbed.streams.codec import make_codec

    schema = load_schema(settings.event.schema)
    model = OnlineModel(settings.models[0])
    learner = Learner(model, None, None, b"k" * 32,  # type: ignore[arg-type]
                      snapshot_every_steps=10**9, snapshot_every_s=1e9,
                      id_window=settings.history.id_window, probe_size=8) if history else None
    processor = InferenceProcessor(
        settings, schema, decoder=make_codec(schema, "e", None),
        prediction_encoder=make_codec(load_schema("prediction"), "p", None),
        models=[model], learners=[learner])
    process_s = encode_s = 0.0
    for start in range(0, len(records), batch):
        began = time.perf_counter()
        out = processor.process(records[start : start + batch])
        middle = time.perf_counter()
        for _, events in out.history:
            for event in events:
                encode_event(event)
        process_s += middle - began
        encode_s += time.perf_counter() - middle
    n = len(records)
    return {"process": process_s / n, "history_encode": encode_s / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", choices=sorted(MODELS), default="lr")
    args = parser.parse_args()
    settings = bench_settings(args.model)
    records = _records(settings, args.events)
    import gc
    gc.collect()
    gc.freeze()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        rounds = {"loop": run_loop(settings, records),
                  "loop, riverbed's codec": run_loop(settings, records, "riverbed")}
        rb = run_riverbed(settings, records, args.batch)
        rounds["riverbed process"] = rb["process"]
        rounds["riverbed history encode"] = rb["history_encode"]
        rounds["riverbed, no history"] = run_riverbed(settings, records, args.batch,
                                                      history=False)["process"]
        for name, value in rounds.items():
            best[name] = min(best.get(name, value), value)
    best["riverbed total"] = best["riverbed process"] + best["riverbed history encode"]
    print(f"{'per event (best of ' + str(args.rounds) + ')':<32}{'us':>8}{'vs loop':>9}")
    for name, value in best.items():
        print(f"{name:<32}{value * 1e6:>8.2f}{value / best['loop']:>8.2f}x")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "hotpath.json").write_text(json.dumps(
        {"events": args.events, "batch": args.batch, "rounds": args.rounds,
         "seconds_per_event": best}, indent=2))


if __name__ == "__main__":
    main()
