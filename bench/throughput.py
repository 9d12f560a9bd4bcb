"""Throughput: riverbed's worker vs a naive Faust agent on the same backlog, same run.

    python bench/throughput.py --events 200000          # full run (prints table, writes JSON)
    python bench/throughput.py --events 20000           # quick look

Both contenders consume the same events topic (separate consumer groups), decode the
same Avro, validate with the same FeatureExtractor, run the same River pipeline
(StandardScaler | LogisticRegression from config/riverbed.toml), predict then learn,
and publish an Avro Prediction per event. Each runs in its own process; its clock
starts at the first event it processes and stops at the last, so start-up and group
join are excluded. The naive agent is the textbook Faust shape: ``async for`` over a
topic and ``await topic.send`` per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.broker import EmbeddedBroker, die_with_parent  # noqa: E402
from streams.config import Settings, load_settings  # noqa: E402
from streams.produce import produce  # noqa: E402
from streams.topics import TopicSpec, ensure_topics, riverbed_topics  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"


def _report(first: float, last: float, count: int, extra: dict[str, Any]) -> None:
    seconds = max(last - first, 1e-9)
    print(json.dumps({"events": count, "seconds": seconds, "events_per_s": count / seconds,
                      **extra}), flush=True)


async def run_riverbed(settings: Settings, events: int) -> None:
    """Contender: riverbed's Worker, in this process; clock from first to last event."""
    from agents.worker import Worker
    from streams.broker import free_port

    worker = Worker(settings, web_port=free_port())
    await worker.start()
    try:
        first = None
        while worker.stats.events < events:
            if first is None and worker.stats.events:
                first = time.perf_counter() - 0.0
            await asyncio.sleep(0.001)  # sampling the clock, not synchronisation
        last = time.perf_counter()
        _report(first or last, last, events, {"batches": worker.stats.batches})
    finally:
        await worker.stop()


def run_naive_faust(settings: Settings, events: int) -> None:
    """Contender: the textbook Faust agent (async for + await send per event)."""
    import faust

    from schemas import load_schema
    from streams.app import faust_broker_url
    from streams.codec import AvroCodec
    from streams.features import FeatureExtractor
    from streams.models import OnlineModel

    schema = load_schema(settings.event.schema)
    decoder, encoder = AvroCodec(schema), AvroCodec(load_schema("prediction"))
    model = OnlineModel(settings.models[0])
    features = FeatureExtractor(schema, settings.event, settings.models[0], settings.limits)
    app = faust.App(f"{settings.worker.group_id}-naive", broker=faust_broker_url(
        settings.broker.bootstrap_servers), web_enabled=False, autodiscover=False,
        store="memory://", broker_session_timeout=3.0, broker_heartbeat_interval=0.3,
        topic_partitions=settings.topics.partitions)
    source = app.topic(settings.topics.events, value_serializer="raw", key_serializer="raw")
    sink = app.topic(settings.topics.predictions, value_serializer="raw", key_serializer="raw")
    state: dict[str, Any] = {"n": 0, "first": None}

    @app.agent(source)
    async def naive(stream: Any) -> None:
        async for key, value in stream.items():
            event = decoder.decode(value)
            x = features.extract(event)
            seq = model.seq
            prediction, proba = model.predict(x)
            if event["label"] is not None:
                model.learn(x, event["label"])
            out = encoder.encode({"event_id": event["event_id"], "key": event["key"],
                                  "model": model.name, "model_seq": seq, "prediction": prediction,
                                  "probabilities": proba, "event_time": event["timestamp"],
                                  "prediction_time": int(time.time() * 1000)})
            await sink.send(key=key, value=out)
            state["n"] += 1
            if state["first"] is None:
                state["first"] = time.perf_counter()
            if state["n"] == events:
                _report(state["first"], time.perf_counter(), events, {})
                os._exit(0)  # measurement done; skip Faust's slow shutdown

    import logging
    logging.basicConfig(level=logging.WARNING)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


def contender(name: str, bootstrap: str, group: str, predictions: str, events: int,
              timeout_s: float) -> dict[str, Any]:
    """Run one contender in a child process and parse its JSON line."""
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": bootstrap,
           "RIVERBED_WORKER__GROUP_ID": group, "RIVERBED_TOPICS__PREDICTIONS": predictions,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--contender", name, "--events",
                             str(events)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    try:
        out, errors = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, errors = proc.communicate()
        raise SystemExit(f"{name} timed out:\n{errors.decode()[-2000:]}") from None
    # Faust routes stdout through its logger, so find the JSON object inside the line
    text = out.decode() + "\n" + errors.decode()
    lines = [line[line.index('{"events"'):].strip() for line in text.splitlines()
             if '{"events"' in line]
    if not lines:
        raise SystemExit(f"{name} printed no result (exit {proc.returncode}):\n"
                         f"{errors.decode()[-3000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contender", choices=["riverbed", "naive-faust"])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    settings = load_settings(CONFIG)
    if args.contender == "riverbed":
        asyncio.run(run_riverbed(settings, args.events))
        return
    if args.contender == "naive-faust":
        run_naive_faust(settings, args.events)
        return
    with EmbeddedBroker() as broker:
        settings = settings.with_bootstrap(broker.bootstrap_servers)
        specs = riverbed_topics(settings) + [
            TopicSpec(f"bench.predictions.{n}", settings.topics.partitions)
            for n in ("riverbed", "naive")]
        asyncio.run(ensure_topics(broker.bootstrap_servers, specs))
        t0 = time.perf_counter()
        asyncio.run(produce(settings, "agrawal", args.events, keep_labels=False))
        print(f"backlog: {args.events:,} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        results = {
            "riverbed": contender("riverbed", broker.bootstrap_servers, "bench-riverbed",
                                  "bench.predictions.riverbed", args.events, args.timeout),
            "naive-faust": contender("naive-faust", broker.bootstrap_servers, "bench-naive",
                                     "bench.predictions.naive", args.events, args.timeout),
        }
    ratio = results["riverbed"]["events_per_s"] / results["naive-faust"]["events_per_s"]
    table = ["| contender | events | seconds | events/s |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        table.append(f"| {name} | {r['events']:,} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} |")
    table.append(f"\nriverbed / naive Faust = **{ratio:.1f}x**")
    print("\n".join(table))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "throughput", "events": args.events, "results": results,
        "ratio_riverbed_vs_naive_faust": ratio, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "model": "StandardScaler | LogisticRegression", "dataset": "agrawal"}, indent=2))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
