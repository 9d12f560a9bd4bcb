"""Latency: event -> prediction at fixed open-loop rates, riverbed vs the hand-written loop.

    python bench/latency.py                      # 1k and 5k events/s, 10 s each
    python bench/latency.py --rates 1000 --seconds 5
    python bench/latency.py --rounds 3           # each measure 3 times, interleaved; medians

The producer stamps every event with its send time (ms) and sends on an open-loop
schedule (it never waits for the consumer). Latency = the Prediction's
``prediction_time - event_time``, both taken on this machine's clock. riverbed runs with
the ``low-latency`` profile (20 ms fetch wait) and all guarantees on; the hand-written loop
uses the same fetch wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from riverbed.schemas import load_schema  # noqa: E402
from riverbed.streams.broker import EmbeddedBroker, die_with_parent, free_port  # noqa: E402
from riverbed.streams.codec import AvroCodec  # noqa: E402
from riverbed.streams.config import load_settings  # noqa: E402
from riverbed.streams.datasets import events  # noqa: E402
from riverbed.streams.output import BatchProducer  # noqa: E402
from riverbed.streams.partitioner import partition_for  # noqa: E402
from riverbed.streams.tail import collect  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402


async def open_loop(settings: Any, topic: str, rate: int, seconds: float) -> int:
    """Send ``rate`` events/s for ``seconds``, each stamped with its send time."""
    codec = AvroCodec(load_schema("agrawal_event"))
    producer = BatchProducer(settings.broker)
    await producer.start()
    total = int(rate * seconds)
    stream = events("agrawal", total, seed=5)
    chunk = max(1, rate // 200)  # 200 sends per second
    start = time.monotonic()
    sent = 0
    futures = []
    while sent < total:
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the open-loop schedule
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        now_ms = int(time.time() * 1000)
        for event in (next(stream) for _ in range(min(chunk, total - sent))):
            event["timestamp"] = now_ms
            key = event["key"].encode()
            by_partition.setdefault(partition_for(key, 4), []).append((key, codec.encode(event)))
            sent += 1
        for partition, records in by_partition.items():
            futures += await producer.publish(topic, partition, records)
    await asyncio.gather(*futures)
    await producer.stop()
    return sent


async def wait_ready(port: int, timeout_s: float) -> None:
    """Until the worker reports ready (models taken over, partitions assigned)."""
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/riverbed/stats", timeout=1) as r:
                if json.loads(r.read()).get("ready"):
                    return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("riverbed worker not ready")


def quantiles(values: list[int]) -> dict[str, float]:
    if not values:
        raise SystemExit("no predictions arrived: the contender did not run (see its log)")
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ordered[-1], "n": len(ordered)}


async def measure(name: str, settings: Any, rate: int, seconds: float,
                  round_no: int = 0) -> dict[str, float]:
    """One contender at one rate: its own topics, a fresh process, the open-loop producer."""
    tag = f"{name}-{rate}-r{round_no}"
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": settings.broker.bootstrap_servers,
           "RIVERBED_WORKER__GROUP_ID": f"lat-{tag}", "RIVERBED_WORKER__PROFILE": "low-latency",
           "RIVERBED_TOPICS__EVENTS": f"lat.events.{tag}",
           "RIVERBED_TOPICS__PREDICTIONS": f"lat.predictions.{tag}",
           "RIVERBED_TOPICS__HISTORY": f"lat.history.{tag}",
           "RIVERBED_TOPICS__SNAPSHOTS": f"lat.snapshots.{tag}",
           "RIVERBED_TOPICS__PENDING": f"lat.pending.{tag}",
           "RIVERBED_TOPICS__LABELS": f"lat.labels.{tag}",
           "RIVERBED_TOPICS__METRICS": f"lat.metrics.{tag}",
           "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex(), "PYTHONPATH": str(ROOT)}
    import dataclasses
    topics = dataclasses.replace(settings.topics, **{
        k.split("__")[1].lower(): v for k, v in env.items() if k.startswith("RIVERBED_TOPICS__")})
    local = dataclasses.replace(settings, topics=topics)
    await ensure_topics(settings.broker, riverbed_topics(local))
    port = free_port()
    if name == "riverbed":
        command = [sys.executable, "-m", "riverbed.cli", "worker", "-c",
                   str(ROOT / "config" / "riverbed.toml"), "--web-port", str(port)]
    else:
        command = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--contender",
                   "aiokafka-loop", "--events", str(int(rate * seconds)), "--fetch-wait", "20"]
    worker = subprocess.Popen(command, env=env, cwd=ROOT, preexec_fn=die_with_parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if name == "riverbed":
            await wait_ready(port, 60)
        await asyncio.sleep(6)  # the loop has no readiness signal: let its group join settle
        sent = await open_loop(local, topics.events, rate, seconds)
        records = await collect(local, topics.predictions, 4, sent, timeout_s=60)
    finally:
        worker.kill()
        worker.wait()
    decoder = AvroCodec(load_schema("prediction"))
    latencies = [p["prediction_time"] - p["event_time"] for p in map(decoder.decode,
                                                                      (r.value for r in records))]
    return quantiles(latencies)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Every (contender, rate) once per round, interleaved; the medians over the rounds."""
    settings = load_settings(ROOT / "config" / "riverbed.toml")
    runs: dict[str, list[dict[str, float]]] = {}
    with EmbeddedBroker() as broker:
        settings = settings.with_bootstrap(broker.bootstrap_servers)
        for round_no in range(args.rounds):
            for rate in args.rates:
                for name in ("riverbed", "aiokafka-loop"):
                    row = await measure(name, settings, rate, args.seconds, round_no)
                    runs.setdefault(f"{name}@{rate}", []).append(row)
                    print(f"round {round_no + 1}/{args.rounds} {name}@{rate}: {row}",
                          file=sys.stderr, flush=True)
    return {key: {**{k: statistics.median(row[k] for row in rows) for k in rows[0]},
                  "p99_ms_rounds": [row["p99_ms"] for row in rows], "rounds": rows}
            for key, rows in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="Measure every contender and rate this many times; report medians.")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print("| contender @ rate | p50 ms | p99 ms (rounds) | max ms | n |\n"
          "|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rounds = ", ".join(f"{x:g}" for x in r["p99_ms_rounds"])
        print(f"| {name} | {r['p50_ms']:g} | {r['p99_ms']:g} ({rounds}) | {r['max_ms']:g} "
              f"| {r['n']:,.0f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "latency", "rounds": args.rounds,
                                       "results": results,
                                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))


if __name__ == "__main__":
    main()
