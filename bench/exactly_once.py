"""Exactly-once vs at-least-once vs the hand-written loop, on Apache Kafka, in one run.

    python bench/exactly_once.py                          # batch sizes 200 1000 4000
    python bench/exactly_once.py --batches 500 --events 20000 --rate 2000 --seconds 8

For each ``limits.max_batch_records`` (the most records one batch holds; under exactly-once
up to 16 waiting batches commit in one transaction), riverbed runs with each guarantee:

* **throughput**: a backlog of ``--events`` events; events/s = events / (when a
  ``read_committed`` consumer receives the last prediction - when the first prediction was
  made, its ``prediction_time``): processing plus the wait for the last commit;
* **latency**: an open-loop stream at ``--rate`` events/s for ``--seconds``; latency = when
  a ``read_committed`` consumer receives the prediction - the event's send time (both on
  this machine's clock): what a downstream consumer sees, transaction commit included.

The hand-written aiokafka loop (``bench/baselines.py``: getmany, decode, predict, learn,
encode, send; no history, no guarantees) runs the same two measures once per round, so
every ratio is taken in the same run. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import TopicPartition  # noqa: E402

from bench.latency import open_loop, quantiles, wait_ready  # noqa: E402
from riverbed.schemas import load_schema  # noqa: E402
from riverbed.streams.broker import die_with_parent, free_port  # noqa: E402
from riverbed.streams.codec import AvroCodec  # noqa: E402
from riverbed.streams.config import Settings, load_settings  # noqa: E402
from riverbed.streams.kafka_broker import KafkaBroker  # noqa: E402
from riverbed.streams.kafka_clients import PartitionReader  # noqa: E402
from riverbed.streams.produce import produce  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"


def _local(settings: Settings, tag: str) -> tuple[Settings, dict[str, str]]:
    env = {"RIVERBED_BROKER__BOOTSTRAP_SERVERS": settings.broker.bootstrap_servers,
           "RIVERBED_WORKER__GROUP_ID": f"eos-{tag}",
           "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex(), "PYTHONPATH": str(ROOT)}
    for field in dataclasses.fields(settings.topics):
        if isinstance(getattr(settings.topics, field.name), str):
            env[f"RIVERBED_TOPICS__{field.name.upper()}"] = f"eos.{field.name}.{tag}"
    topics = dataclasses.replace(settings.topics, **{
        k.split("__")[1].lower(): v for k, v in env.items() if k.startswith("RIVERBED_TOPICS__")})
    return dataclasses.replace(settings, topics=topics), env


async def _arrivals(settings: Settings, expected: int, timeout_s: float
                    ) -> list[tuple[float, int, int]]:
    """(arrival time in ms, event_time, prediction_time) of each prediction a
    read_committed consumer gets."""
    decode = AvroCodec(load_schema("prediction")).decode
    t = settings.topics
    got: list[tuple[float, int, int]] = []
    deadline = time.monotonic() + timeout_s
    async with PartitionReader(settings.broker, [TopicPartition(t.predictions, p)
                                                 for p in range(t.partitions)],
                               fetch_max_wait_ms=5) as reader:
        while len(got) < expected and time.monotonic() < deadline:
            for records in (await reader.fetch(100)).values():
                now = time.time() * 1000
                for r in records:
                    p = decode(r.value)
                    got.append((now, p["event_time"], p["prediction_time"]))
    return got


async def _one(settings: Settings, name: str, guarantee: str, batch: int, mode: str,
               args: argparse.Namespace, tag: str) -> dict[str, Any]:
    local, env = _local(settings, tag)
    await ensure_topics(settings.broker, riverbed_topics(local))
    env = {**os.environ, **env, "RIVERBED_LIMITS__MAX_BATCH_RECORDS": str(batch),
           "RIVERBED_WORKER__PROFILE": "low-latency" if mode == "latency" else "throughput"}
    if name == "riverbed":
        env["RIVERBED_WORKER__PROCESSING_GUARANTEE"] = guarantee
    count = args.events if mode == "throughput" else int(args.rate * args.seconds)
    if mode == "throughput":  # the backlog is there before the contender starts
        await produce(local, "agrawal", count, seed=3, keep_labels=False)
    port = free_port()
    command = ([sys.executable, "-m", "riverbed.cli", "worker", "-c", str(CONFIG),
                "--web-port", str(port)] if name == "riverbed" else
               [sys.executable, str(ROOT / "bench" / "throughput.py"), "--contender",
                "aiokafka-loop", "--events", str(count), "--fetch-wait", "5"])
    child = subprocess.Popen(command, env=env, cwd=ROOT, preexec_fn=die_with_parent,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if name == "riverbed":
            await wait_ready(port, 90)
        if mode == "throughput":
            got = await _arrivals(local, count, 600)
            if len(got) < count:
                raise SystemExit(f"{name}: {len(got)}/{count} predictions (exit "
                                 f"{child.poll()})")
            # from the first prediction made to the last one visible (commit included)
            span_s = (max(a for a, _, _ in got) - min(p for _, _, p in got)) / 1000
            return {"events_per_s": count / span_s, "received": len(got)}
        await asyncio.sleep(6 if name != "riverbed" else 1)  # the loop has no ready signal
        receiving = asyncio.ensure_future(_arrivals(local, count, args.seconds + 120))
        await open_loop(local, local.topics.events, args.rate, args.seconds)
        got = await receiving
        return quantiles([int(arrived - sent) for arrived, sent, _ in got])
    finally:
        child.kill()
        child.wait()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"batches": args.batches, "events": args.events,
                               "rate": args.rate, "seconds": args.seconds, "rounds": []}
    with KafkaBroker() as broker:
        settings = load_settings(CONFIG, env={}).with_bootstrap(broker.bootstrap_servers)
        for round_no in range(args.rounds):
            row: dict[str, Any] = {}
            runs = [("aiokafka-loop", "none", args.batches[0])] + [
                ("riverbed", g, b) for b in args.batches for g in ("at_least_once",
                                                                   "exactly_once")]
            for name, guarantee, batch in runs:
                key = name if name != "riverbed" else f"{guarantee}@{batch}"
                for mode in ("throughput", "latency"):
                    tag = f"{key}-{mode}-r{round_no}".replace("@", "-").replace("_", "-")
                    row.setdefault(key, {})[mode] = await _one(
                        settings, name, guarantee, batch, mode, args, tag)
                    print(f"round {round_no + 1}: {key} {mode}: {row[key][mode]}", flush=True)
            results["rounds"].append(row)
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| contender | max batch | events/s (backlog) | vs loop | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in results["rounds"]:
        loop = row["aiokafka-loop"]["throughput"]["events_per_s"]
        for key, measured in row.items():
            guarantee, _, batch = key.partition("@")
            rate = measured["throughput"]["events_per_s"]
            lat = measured["latency"]
            lines.append(f"| {guarantee} | {batch or '-'} | {rate:,.0f} | {rate / loop:.2f}x "
                         f"(loop {loop:,.0f}/s) | {lat['p50_ms']:.0f} | {lat['p99_ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[200, 1000, 4000])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench" / "results" / "exactly_once.json")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
