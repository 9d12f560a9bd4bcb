"""Replay and restore speed of the event-sourced history, against River alone, same run.

    python bench/replay.py --steps 200000          # replay speed
    python bench/replay.py --steps 1000000         # + restore time of a 1M-step history

1. River learn-only: ``learn_one`` over the examples in a list (the bound).
2. Replay, core: fold + learn over already-decoded history events (no I/O).
3. Replay, end to end: read the history topic from the embedded broker, decode, fold, learn
   (what ``riverbed replay --from-genesis`` does).
4. Restore: a fresh learner's takeover (snapshot index -> newest snapshot -> tail -> claim),
   with the default snapshot cadence (``history.snapshot_every_steps``: 100,000 steps;
   restore folds at most that many steps after the newest snapshot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from riverbed.agents.learner import Learner  # noqa: E402
from riverbed.streams.broker import EmbeddedBroker  # noqa: E402
from riverbed.streams.checks import FEATURES  # noqa: E402
from riverbed.streams.config import load_settings  # noqa: E402
from riverbed.streams.datasets import events  # noqa: E402
from riverbed.streams.effects import apply_effects, gc_paused  # noqa: E402
from riverbed.streams.history import Example, examples_of, fold  # noqa: E402
from riverbed.streams.history_log import HistoryLog, SnapshotIndex  # noqa: E402
from riverbed.streams.models import OnlineModel  # noqa: E402
from riverbed.streams.output import BatchProducer  # noqa: E402
from riverbed.streams.replay import example_check, read_model_history  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402

KEY = os.urandom(32)


def examples(n: int) -> list[Example]:
    return [Example(e["event_id"], {f: float(e[f]) for f in FEATURES}, e["label"])
            for e in events("agrawal", n, seed=3)]


async def build_history(settings: Any, data: list[Example], batch: int) -> Learner:
    """Write a history like a live learner would (Learned batches + default snapshots)."""
    producer = BatchProducer(settings.broker)
    await producer.start()
    log = HistoryLog.of(settings, producer, KEY)
    index = SnapshotIndex(settings.broker, settings.topics.snapshots, producer)
    h = settings.history
    learner = Learner(OnlineModel(settings.models[0]), log, index, KEY,
                      snapshot_every_steps=h.snapshot_every_steps, snapshot_every_s=1e9,
                      id_window=h.id_window, probe_size=h.probe_size)
    await learner.takeover()
    model = learner.model
    for start in range(0, len(data), batch):
        chunk = data[start : start + batch]
        seq_before = model.seq
        for ex in chunk:
            model.learn(ex.x, ex.y)  # type: ignore[arg-type]
        history = learner.record_batch(seq_before, chunk, {"events:0": start + len(chunk)})
        if learner.snapshot_due():
            history += learner.snapshot_events()
        offsets = await log.append(history)
        await learner.publish_index(history, offsets)
    await producer.stop()
    return learner


def river_learn_only(settings: Any, data: list[Example]) -> float:
    model = OnlineModel(settings.models[0])
    learn = model.estimator.learn_one  # type: ignore[attr-defined]
    began = time.perf_counter()
    with gc_paused():  # the same treatment as the replay (a fair bound)
        for ex in data:
            learn(dict(ex.x), ex.y)
    return time.perf_counter() - began


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(ROOT / "config" / "riverbed.toml")
    results: dict[str, Any] = {"steps": args.steps}
    data = examples(args.steps)
    with EmbeddedBroker() as broker:
        settings = settings.with_bootstrap(broker.bootstrap_servers)
        await ensure_topics(settings.broker, riverbed_topics(settings))
        began = time.perf_counter()
        writer = await build_history(settings, data, 2000)
        results["build_s"] = time.perf_counter() - began
        name = settings.models[0].name

        began = time.perf_counter()
        history = await read_model_history(settings, name, key=KEY)
        read_s = time.perf_counter() - began
        learn_s, core_s = float("inf"), float("inf")
        for _ in range(args.repeat):  # interleaved; best of N (the machine is noisy)
            learn_s = min(learn_s, river_learn_only(settings, data))
            began = time.perf_counter()
            state, effects = fold(name, history)
            model = OnlineModel(settings.models[0])
            apply_effects(model, effects, KEY, example_check(settings, model))  # as replay
            core_s = min(core_s, time.perf_counter() - began)
        results["river_learn_only_steps_per_s"] = args.steps / learn_s
        assert len(examples_of(effects)) == args.steps
        results["replay_core_steps_per_s"] = args.steps / core_s
        results["replay_end_to_end_steps_per_s"] = args.steps / (core_s + read_s)
        results["read_decode_s"] = read_s

        producer = BatchProducer(settings.broker)
        await producer.start()
        log = HistoryLog.of(settings, producer, KEY)
        index = SnapshotIndex(settings.broker, settings.topics.snapshots,
                              producer)
        restored = OnlineModel(settings.models[0])
        fresh = Learner(restored, log, index, KEY,
                        snapshot_every_steps=10_000, snapshot_every_s=60, id_window=200_000,
                        probe_size=16, check=example_check(settings, restored))  # as a worker
        began = time.perf_counter()
        await fresh.takeover()
        results["restore_s"] = time.perf_counter() - began
        await producer.stop()
        assert fresh.model.seq == args.steps == writer.model.seq
        results["restore_fingerprint_matches"] = (
            fresh.fold.fingerprint == writer.fold.fingerprint)
    for key in ("replay_core", "replay_end_to_end"):
        results[f"{key}_vs_river"] = (results[f"{key}_steps_per_s"]
                                      / results["river_learn_only_steps_per_s"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N timed runs")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "replay.json")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    rows = [("River learn-only", results["river_learn_only_steps_per_s"], 1.0),
            ("replay core (fold + learn)", results["replay_core_steps_per_s"],
             results["replay_core_vs_river"]),
            ("replay end to end (read + decode + fold + learn)",
             results["replay_end_to_end_steps_per_s"], results["replay_end_to_end_vs_river"])]
    print("| path | steps/s | vs River learn-only |\n|---|---:|---:|")
    for name, rate, ratio in rows:
        print(f"| {name} | {rate:,.0f} | {ratio:.2f}x |")
    print(f"\nrestore of a {args.steps:,}-step history (default snapshot cadence): "
          f"{results['restore_s']:.2f} s, fingerprint matches: "
          f"{results['restore_fingerprint_matches']}")
    results.update(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine={
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "platform": platform.platform()})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
