"""Throughput: riverbed's worker vs its baselines on the same backlog, in the same run.

    python bench/throughput.py --events 200000          # full run (prints table, writes JSON)
    python bench/throughput.py --events 20000           # quick look
    python bench/throughput.py --only riverbed aiokafka-loop
    python bench/throughput.py --model hat --only riverbed aiokafka-loop river-alone
    python bench/throughput.py --only riverbed riverbed-labels   # the label-join path
    python bench/throughput.py --events 30000 --rounds 3  # every contender 3x, interleaved
    python bench/throughput.py --broker kafka ...        # on Apache Kafka 4 (its jars)

Contenders: riverbed (all guarantees on: history, dedup, dead letters, metrics, label
join), the hand-written aiokafka getmany loop (the bound), quixstreams ``.apply``, the
naive Faust agent, and River alone (model only, in memory). ``riverbed-labels`` is
riverbed on the label-join path: the same events arrive unlabelled and every label
follows on the labels topic a few ms later (pending store, join, pending log).
``riverbed-2w`` is two worker processes with one model per partition
(``worker.model_per_partition``) sharing the 4 partitions; it is timed over the window
in which both workers own partitions and process events (the first to join the group
starts alone), counting the events learned inside that window.

Both contenders consume the same events topic (separate consumer groups), decode the
same Avro (riverbed with its cavro codec, the baselines with fastavro as a hand-written
loop would; ``--baseline-codec riverbed`` gives them riverbed's codec too), validate with
the same FeatureExtractor, run the same River pipeline
(StandardScaler | LogisticRegression from config/riverbed.toml), predict then learn,
and publish an Avro Prediction per event. Each runs in its own process; its clock
starts at the first event it processes and stops at the last, so start-up and group
join are excluded. The naive agent is the textbook Faust shape: ``async for`` over a
topic and ``await topic.send`` per event.

This host's speed drifts by 2x within minutes, so ``--rounds N`` runs every contender N
times, interleaved (rotating the order each round), and reports the median events/s and
riverbed's ratio to each contender per round (both timed in the same round) and its median.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import baselines  # noqa: E402
from bench.baseline_codec import CHOICES as CODECS  # noqa: E402
from bench.baseline_codec import ENV as CODEC_ENV  # noqa: E402
from bench.measure import cpu_marks, report, two_process_scaling  # noqa: E402
from riverbed.streams.broker import EmbeddedBroker, LocalBroker, die_with_parent  # noqa: E402
from riverbed.streams.config import Settings, load_settings  # noqa: E402
from riverbed.streams.produce import produce  # noqa: E402
from riverbed.streams.topics import TopicSpec, ensure_topics, riverbed_topics  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"
CONTENDERS = ["riverbed", "riverbed-2w", "aiokafka-loop", "quixstreams", "naive-faust",
              "river-alone", "riverbed-labels"]
#: ``--model``: the default LR from config/riverbed.toml, or a heavier tree.
MODELS: dict[str, tuple[dict[str, Any], ...]] = {
    "lr": (),
    "hat": ({"tree.HoeffdingAdaptiveTreeClassifier": {"grace_period": 200}},),
    # a light model (LogisticRegression without the scaler: 6 us per predict + learn vs
    # the pipeline's 27 us): the platform's own per-event and per-batch costs weigh more,
    # as they do when the host is fast and the model is a smaller share of the work
    "light": ({"linear_model.LogisticRegression": {"l2": 0.0001}},),
}
#: Topics of the label-join contender (its own backlog: unlabelled events + labels).
LABELS_TOPICS = {"EVENTS": "bench.later.events", "LABELS": "bench.later.labels",
                 "HISTORY": "bench.later.history", "SNAPSHOTS": "bench.later.snapshots",
                 "PENDING": "bench.later.pending", "METRICS": "bench.later.metrics"}


def bench_settings(model: str) -> Settings:
    """The benchmark's settings: config/riverbed.toml (+ env), with ``model`` swapped in."""
    settings = load_settings(CONFIG)
    if MODELS[model]:
        spec = dataclasses.replace(settings.models[0], name=f"agrawal-{model}",
                                   pipeline=MODELS[model])
        settings = dataclasses.replace(settings, models=(spec,))
    return settings


async def run_riverbed(settings: Settings, events: int) -> None:
    """Contender: riverbed's Worker, in this process; clock from the first batch to the one
    after which every event has been learned (on the label path: joined with its label).
    The clock is read inside the worker's batch processing, so nothing polls."""
    from riverbed.agents.worker import Worker
    from riverbed.streams.broker import free_port

    worker = Worker(settings, web_port=free_port())
    stats, process = worker.stats, worker.processor.process
    clock: dict[str, float] = {}
    done = asyncio.Event()

    cpu: dict[str, tuple[float, float]] = {}
    sizes: list[int] = []  # records per processed batch (the batch-size distribution)

    def timed_process(records: Any) -> Any:
        began = time.perf_counter()
        sizes.append(len(records))
        if "first" not in clock:
            clock["first"], cpu["first"] = began, cpu_marks()
        result = process(records)
        clock["process"] = clock.get("process", 0.0) + time.perf_counter() - began
        if sum(stats.learned.values()) >= events and not done.is_set():
            clock["last"] = time.perf_counter()
            done.set()
        return result

    worker.processor.process = timed_process  # type: ignore[method-assign]
    fetched_batch = worker.batches.get

    async def timed_get() -> Any:  # time the batch task waits for fetched input
        began = time.perf_counter()
        try:
            return await fetched_batch()
        finally:
            if "first" in clock and "last" not in clock:
                clock["input_wait"] = clock.get("input_wait", 0.0) + (
                    time.perf_counter() - began)

    worker.batches.get = timed_get  # type: ignore[method-assign]
    await worker.start()
    try:
        await asyncio.wait_for(done.wait(), 600)
        report(clock["first"], clock["last"], events, {
            "batches": stats.batches, "records": stats.events,
            "process_s": clock["process"],  # wall time in InferenceProcessor.process
            # wall time the batch task waited for fetched input (the rest of the window:
            # waiting for acks to free a slot, the event loop's other tasks)
            "input_wait_s": clock.get("input_wait", 0.0),
            "batch_size_p10": _quantile(sizes, 0.1), "batch_size_p50": _quantile(sizes, 0.5),
            "batch_size_p90": _quantile(sizes, 0.9), "batch_size_max": max(sizes)},
            cpu.get("first"))
    finally:  # the result is out; a stop that hangs must not hold the benchmark
        await worker.stop_within(60)


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_riverbed_2w(events: int) -> None:
    """Contender: two ``riverbed worker`` processes, one model per partition."""
    import urllib.request

    from riverbed.streams.broker import free_port

    def stats(port: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/riverbed/stats",
                                        timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    env = {**os.environ, "RIVERBED_WORKER__MODEL_PER_PARTITION": "true"}
    ports = [free_port(), free_port()]
    workers = [subprocess.Popen([sys.executable, "-m", "riverbed.cli", "worker", "-c",
                                 str(CONFIG), "--web-port", str(port)], env=env, cwd=ROOT,
                                preexec_fn=die_with_parent, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for port in ports]
    pids = tuple(worker.pid for worker in workers)
    try:
        window: tuple[float, int] | None = None
        cpu_first: tuple[float, float] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            pages: list[Any] = [await asyncio.to_thread(stats, port) for port in ports]
            now = time.perf_counter()
            interval = 0.02
            if all(pages):
                learned = sum(sum(p["learned"].values()) for p in pages)
                both = all(p["partitions"] and p["events"] for p in pages)
                if window is None and both:
                    window, cpu_first = (now, learned), cpu_marks(pids)
                if learned >= events:
                    if window is None:
                        raise SystemExit("one worker learned everything before the other "
                                         "joined: use more --events")
                    report(window[0], now, learned - window[1],
                           {"learned_before_window": window[1]}, cpu_first, pids)
                    return
                if window is not None and learned > window[1]:
                    # sample rarely mid-run (each sample costs both workers CPU, and on 2
                    # cores they have none to spare), often near the expected end
                    rate = (learned - window[1]) / max(now - window[0], 1e-3)
                    interval = min(0.25, max(0.02, (events - learned) / rate / 4))
            await asyncio.sleep(interval)  # sampling the workers' counters
        raise SystemExit("riverbed-2w did not finish in 600 s")
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def contender(name: str, bootstrap: str, events: int, model: str,
              timeout_s: float, broker_pid: int | None = None, round_no: int = 0
              ) -> dict[str, Any]:
    """Run one contender in a child process and parse its JSON line. Every round reads
    the same backlog with its own group, output and history topics (:func:`tag`)."""
    t = tag(model, name, round_no)
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": bootstrap,
           "RIVERBED_WORKER__GROUP_ID": f"bench-{t}",
           "RIVERBED_TOPICS__PREDICTIONS": f"bench.predictions.{t}",
           "RIVERBED_TOPICS__HISTORY": f"bench.history.{t}",
           "RIVERBED_TOPICS__SNAPSHOTS": f"bench.snapshots.{t}",
           "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex(), "PYTHONPATH": str(ROOT),
           "RIVERBED_BENCH_BROKER_PID": str(broker_pid or "")}
    if name == "riverbed-labels":
        env.update({f"RIVERBED_TOPICS__{k}": v if k in ("EVENTS", "LABELS") else f"{v}.r{round_no}"
                    for k, v in LABELS_TOPICS.items()})
    # Faust and quixstreams keep state under the working directory (./<id>-data, ./state)
    # and contenders end with os._exit: run each in a temporary directory removed afterwards.
    with tempfile.TemporaryDirectory(prefix=f"riverbed-bench-{name}-") as scratch:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--contender",
                                 name, "--events", str(events), "--model", model],
                                env={**env, "TMPDIR": scratch}, cwd=scratch,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent)
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


def tag(model: str, name: str, round_no: int) -> str:
    """The suffix of one contender's group and topics in one round."""
    return f"{model}.{name}.r{round_no}"


def run_contender(name: str, settings: Settings, events: int, fetch_wait_ms: int) -> None:
    """Inside a contender's child process: run it and print its JSON line."""
    if name in ("riverbed", "riverbed-labels"):
        asyncio.run(run_riverbed(settings, events))
    elif name == "riverbed-2w":
        asyncio.run(run_riverbed_2w(events))
    elif name == "naive-faust":
        baselines.run_naive_faust(settings, events)
    elif name == "aiokafka-loop":
        asyncio.run(baselines.run_aiokafka_loop(settings, events, fetch_wait_ms))
    elif name == "quixstreams":
        baselines.run_quixstreams(settings, events)
    else:
        baselines.run_river_alone(settings, events)


async def make_backlogs(settings: Settings, chosen: list[str], events: int, model: str,
                        rounds: int = 1) -> None:
    """The shared backlog (labels inline) and, for riverbed-labels, its own backlog of
    unlabelled events whose labels follow on the labels topic."""
    specs = riverbed_topics(settings) + [  # quixstreams does not create its output topic
        TopicSpec(f"bench.predictions.{tag(model, name, r)}", settings.topics.partitions)
        for name in chosen for r in range(rounds)]
    if "riverbed-labels" in chosen:
        later = dataclasses.replace(settings, topics=dataclasses.replace(
            settings.topics, events=LABELS_TOPICS["EVENTS"], labels=LABELS_TOPICS["LABELS"]))
        specs += [TopicSpec(LABELS_TOPICS["EVENTS"], settings.topics.partitions),
                  TopicSpec(LABELS_TOPICS["LABELS"], settings.topics.partitions)]
    await ensure_topics(settings.broker, specs)
    if any(c != "riverbed-labels" for c in chosen):
        await produce(settings, "agrawal", events, keep_labels=False)
    if "riverbed-labels" in chosen:
        await produce(later, "agrawal", events, keep_labels=False, label_delay_s=0.005)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per contender: the median of each measure over the rounds, and riverbed's ratio to
    it per round (riverbed and the contender timed in the same round) and its median."""
    results = {}
    ceiling = runs.pop("host-2-process-ceiling", None)
    for name, rows in runs.items():
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))
                and all(k in row for row in rows)]
        results[name] = {**{k: statistics.median(row[k] for row in rows) for k in keys},
                         "rounds": rows}
    ratios: dict[str, list[float]] = {}
    if "riverbed" in runs:
        ratios = {name: [mine["events_per_s"] / theirs["events_per_s"] for mine, theirs
                         in zip(runs["riverbed"], rows, strict=True)]
                  for name, rows in runs.items()}
    summary = {"results": results, "riverbed_vs_rounds": ratios,
               "riverbed_vs": {name: statistics.median(r) for name, r in ratios.items()}}
    if ceiling:
        summary["host_two_process_scaling_rounds"] = [row["ratio"] for row in ceiling]
        summary["host_two_process_scaling"] = statistics.median(row["ratio"] for row in ceiling)
    return summary


def table(summary: dict[str, Any]) -> str:
    """The markdown table of one run: medians over the rounds, riverbed's median ratio
    and the ratio of every round."""
    vs, per_round = summary["riverbed_vs"], summary["riverbed_vs_rounds"]
    lines = ["| contender | events | events/s (median) | riverbed / contender: median (rounds) "
             "| CPU us/event: own, broker |", "|---|---:|---:|---:|---:|"]
    for name, r in summary["results"].items():
        ratio_text = (f"{vs[name]:.2f}x ({', '.join(f'{x:.2f}' for x in per_round[name])})"
                      if name in vs else "-")
        cpu = (f"{r['cpu_us_per_event']:.1f}, {r['broker_cpu_us_per_event']:.1f}"
               if "cpu_us_per_event" in r else "-")
        lines.append(f"| {name} | {r['events']:,.0f} | {r['events_per_s']:,.0f} | "
                     f"{ratio_text} | {cpu} |")
    return "\n".join(lines)


def run_rounds(chosen: list[str], broker: LocalBroker, args: argparse.Namespace
               ) -> dict[str, list[dict[str, Any]]]:
    """Every contender once per round; each round starts one contender later (rotating
    the order), so a slow phase of the host does not always hit the same contender."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for round_no in range(args.rounds):
        if "riverbed-2w" in chosen:  # the host's own 2-process ceiling, in this round
            runs.setdefault("host-2-process-ceiling", []).append(
                {"ratio": two_process_scaling()})
        shift = round_no % len(chosen)
        for name in chosen[shift:] + chosen[:shift]:
            row = contender(name, broker.bootstrap_servers, args.events, args.model,
                            args.timeout, broker.pid, round_no)
            runs[name].append(row)
            print(f"round {round_no + 1}/{args.rounds} {name}: "
                  f"{row['events_per_s']:,.0f} events/s", file=sys.stderr, flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contender", choices=CONTENDERS)
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, help="Run only these.")
    parser.add_argument("--model", choices=sorted(MODELS), default="lr")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench" / "results" / "throughput.json")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--rounds", type=int, default=1,
                        help="Run every contender this many times, interleaved; report medians.")
    parser.add_argument("--fetch-wait", type=int, default=100, help="aiokafka-loop fetch wait ms")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                        help="the embedded Tansu broker, or Apache Kafka 4 run from its jars "
                             "(python -m riverbed.streams.kafka_broker fetch)")
    parser.add_argument("--baseline-codec", choices=CODECS, default=os.environ.get(CODEC_ENV,
                        "fastavro"), help="Avro codec of the baselines (riverbed: cavro)")
    args = parser.parse_args()
    os.environ[CODEC_ENV] = args.baseline_codec  # the contenders' processes inherit it
    settings = bench_settings(args.model)
    if args.contender:
        run_contender(args.contender, settings, args.events, args.fetch_wait)
        return
    chosen = args.only or CONTENDERS
    if args.broker == "kafka":
        from riverbed.streams.kafka_broker import KafkaBroker
        local: LocalBroker = KafkaBroker()
    else:
        local = EmbeddedBroker()
    with local as broker:
        settings = settings.with_bootstrap(broker.bootstrap_servers)
        t0 = time.perf_counter()
        asyncio.run(make_backlogs(settings, chosen, args.events, args.model, args.rounds))
        print(f"backlog: {args.events:,} events in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        summary = summarize(run_rounds(chosen, broker, args))
    print(table(summary))
    if "host_two_process_scaling" in summary:
        print("host ceiling, two CPU-bound processes / one: "
              f"{summary['host_two_process_scaling']:.2f}x (rounds: "
              f"{', '.join(f'{x:.2f}' for x in summary['host_two_process_scaling_rounds'])})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "throughput", "events": args.events, "rounds": args.rounds, **summary,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "model": settings.models[0].name, "pipeline": [dict(p) for p in
                                                      settings.models[0].pipeline],
        "dataset": "agrawal", "baseline_codec": args.baseline_codec, "broker": args.broker},
        indent=2, default=str))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
