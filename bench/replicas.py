"""Scale-out with prediction replicas (``worker.scale_out = "replicas"``), in one run.

    python bench/replicas.py                      # everything (a few minutes)
    python bench/replicas.py --events 60000 --kills 5 --rate 5000

1. Prediction throughput of a global LR model (config/riverbed.toml) with 1, 2 and 3
   workers: a backlog of ``--events`` inline-labelled events; each worker count runs on
   fresh topics; timed from the moment every worker is settled (one learner, the others
   replicas, every input partition owned) to the last prediction, counting the
   predictions made in that window (``prediction_time``). Beside it, the host's own
   ceiling for two CPU-bound processes (``bench/measure.py``), measured in the same run:
   on 2 cores, 3 workers cannot beat it. Ratios are to the 1-worker rate of this run.
2. The learner's ceiling: ``TrainingLoop.learn`` (decode the training record, dedup,
   learn, build the ``Learned`` record with its fingerprint) in-process, no broker,
   against River's ``learn_one`` alone on the same examples.
3. How a replica catches up: re-applying ``Learned`` examples (per step) against loading
   the learner's snapshot (per load) and against a published model state
   (``replica_catch_up = "state"``: sign + encode on the learner, verify + load on the
   replica), in-process.
4. Replica staleness at ``--rate`` events/s with 3 workers, for each way of catching up
   (``examples``, ``state`` with its default cadence), in the same run: p50/p99 of the
   steps and ms each replica was behind when it caught up (``/riverbed/stats``), and the
   replicas' CPU seconds per event over the stream (``/proc``).
5. Failover: SIGKILL the learner ``--kills`` times under a steady stream; from the kill to
   the new learner's role and to its first new learn step (median).

Writes ``bench/results/replicas.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pickle
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import TopicPartition  # noqa: E402

from bench.measure import two_process_scaling  # noqa: E402
from bench.takeover import Child, wait  # noqa: E402
from riverbed.agents.learner import Learner  # noqa: E402
from riverbed.agents.replica import ReplicaFollower  # noqa: E402
from riverbed.agents.training import TrainingLoop  # noqa: E402
from riverbed.schemas import load_schema  # noqa: E402
from riverbed.streams.broker import EmbeddedBroker  # noqa: E402
from riverbed.streams.codec import AvroCodec  # noqa: E402
from riverbed.streams.config import Settings, load_settings  # noqa: E402
from riverbed.streams.datasets import events  # noqa: E402
from riverbed.streams.effects import apply_effects  # noqa: E402
from riverbed.streams.features import FeatureExtractor  # noqa: E402
from riverbed.streams.history import Claimed, Example, Learn  # noqa: E402
from riverbed.streams.history_codec import encode_event, record_headers  # noqa: E402
from riverbed.streams.kafka_clients import PartitionReader  # noqa: E402
from riverbed.streams.models import OnlineModel, build_estimator  # noqa: E402
from riverbed.streams.produce import produce  # noqa: E402
from riverbed.streams.replica_state import StateAssembler, encode_state, load_state  # noqa: E402
from riverbed.streams.snapshots import load_snapshot  # noqa: E402
from riverbed.streams.telemetry import WorkerStats  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402
from riverbed.streams.training import TrainingBatch, encode_training  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"
MODEL = "agrawal-lr"


def fresh(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """Settings and a worker environment on topics and a group of their own."""
    run = uuid.uuid4().hex[:8]
    topics = {f.name: f"{getattr(settings.topics, f.name)}-{run}"
              for f in dataclasses.fields(settings.topics)
              if isinstance(getattr(settings.topics, f.name), str)}
    s = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, **topics),
                            worker=dataclasses.replace(settings.worker, group_id=f"b{run}"))
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": s.broker.bootstrap_servers,
           "RIVERBED_WORKER__GROUP_ID": s.worker.group_id,
           "RIVERBED_WORKER__SCALE_OUT": "replicas",
           "RIVERBED_WORKER__PROFILE": "low-latency",
           "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex(),
           **{f"RIVERBED_TOPICS__{k.upper()}": v for k, v in topics.items()}}
    asyncio.run(ensure_topics(s.broker, riverbed_topics(s)))
    return s, env


def settled(children: list[Child]) -> bool:
    stats = [c.get("/riverbed/stats") for c in children]
    if any(s is None for s in stats):
        return False
    roles = sorted(str(s["role"]) for s in stats if s is not None)
    parts = sorted(p for s in stats if s is not None for p in s["partitions"])
    return (roles == ["learner"] + ["replica"] * (len(children) - 1) and parts == [0, 1, 2, 3]
            and all(s["partitions"] for s in stats if s is not None))


async def prediction_times(s: Settings, want: int, timeout_s: float) -> list[int]:
    """``prediction_time`` of the first ``want`` distinct events' predictions."""
    decode = AvroCodec(load_schema("prediction")).decode
    tps = [TopicPartition(s.topics.predictions, p) for p in range(s.topics.partitions)]
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    async with PartitionReader(s.broker, tps, fetch_max_wait_ms=100) as reader:
        while len(seen) < want:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(seen)} of {want} predicted in {timeout_s}s")
            for records in (await reader.fetch(500)).values():
                for record in records:
                    p = decode(record.value)
                    seen.setdefault(p["event_id"], p["prediction_time"])
    return list(seen.values())


def throughput(settings: Settings, workers: int, count: int) -> dict[str, float]:
    s, env = fresh(settings)
    asyncio.run(produce(s, "agrawal", count, seed=workers))  # the backlog, labels inline
    children = [Child(env) for _ in range(workers)]
    try:
        wait(lambda: settled(children), 120, f"{workers} workers settled")
        start_ms = time.time() * 1000
        times = asyncio.run(prediction_times(s, count, 600))
    finally:
        for child in children:
            child.kill()
    inside = [t for t in times if t >= start_ms]
    window_s = max(1e-3, (max(times) - start_ms) / 1000)
    return {"workers": workers, "events": len(inside), "window_s": round(window_s, 3),
            "events_per_s": round(len(inside) / window_s, 1)}


def _learner(settings: Settings) -> Learner:
    learner = Learner(OnlineModel(settings.models[0]), cast(Any, None), cast(Any, None),
                      b"k" * 32, snapshot_every_steps=10**9, snapshot_every_s=1e9,
                      id_window=settings.history.id_window, probe_size=settings.history.probe_size)
    learner.epoch = 1
    learner.fold.apply(learner.event(Claimed("bench")))
    return learner


def examples_of_dataset(settings: Settings, count: int) -> list[Example]:
    spec = settings.models[0]
    model = OnlineModel(spec)
    extract = FeatureExtractor(load_schema(settings.event.schema, settings.base_dir),
                               settings.event, spec, settings.limits, binary=model.is_binary)
    return [Example(e["event_id"], extract.extract(e), extract.label_rule.check(e["label"]))
            for e in events("agrawal", count, seed=3)]


def learner_ceiling(settings: Settings, count: int) -> dict[str, float]:
    """In-process: TrainingLoop.learn over 500-example records vs River learn_one."""
    examples = examples_of_dataset(settings, count)
    records = [type("R", (), {"offset": i, "key": MODEL.encode(), "value": encode_training(
        TrainingBatch(MODEL, tuple(examples[i * 500:(i + 1) * 500]), {"e:0": i}))})()
        for i in range(count // 500)]
    loop = TrainingLoop(settings, _learner(settings), asyncio.Lock(), WorkerStats())
    began = time.perf_counter()
    for record in records:
        loop.learn([record])
    learner_s = time.perf_counter() - began
    estimator = build_estimator(settings.models[0])
    began = time.perf_counter()
    for example in examples[: len(records) * 500]:
        estimator.learn_one(dict(example.x), example.y)  # type: ignore[attr-defined]
    river_s = time.perf_counter() - began
    n = len(records) * 500
    return {"examples": n, "learner_per_s": round(n / learner_s), "river_per_s":
            round(n / river_s), "ratio": round(river_s / learner_s, 3)}


#: a model whose learn step is expensive, to weigh the two ways of catching up against
FOREST = ({"forest.ARFClassifier": {"n_models": 5, "seed": 1}},)


def follower_costs(settings: Settings, count: int, pipeline: Any = None,
                   state_every: int = 1000) -> dict[str, Any]:
    """A replica's CPU per learn step, in-process, both ways: ``examples`` (decode the
    history records, fold, re-apply) against ``state`` (decode, fold, and verify + load the
    learner's state every ``state_every`` steps), on the same history of ``count`` steps."""
    spec = settings.models[0] if pipeline is None else dataclasses.replace(
        settings.models[0], pipeline=pipeline)
    s = dataclasses.replace(settings, models=(spec,))
    examples = examples_of_dataset(s, count)
    learner = _learner(s)
    loop = TrainingLoop(s, learner, asyncio.Lock(), WorkerStats())
    history, states, offset = [], {}, 1  # offset 0: the learner's claim
    began = time.perf_counter()
    for i in range(0, count, 500):
        record = type("R", (), {"offset": i, "key": MODEL.encode(), "value": encode_training(
            TrainingBatch(MODEL, tuple(examples[i:i + 500]), {"e:0": i}))})()
        for event in loop.learn([record]):
            value = encode_event(event)
            history.append(type("H", (), {"offset": offset, "key": MODEL.encode(),
                                          "value": value, "headers": record_headers(
                                              event, value, learner.key)})())
            offset += 1
        fold = learner.fold
        if fold.seq % state_every == 0:
            states[len(history)] = encode_state(
                learner.model.estimator, learner.key, model=MODEL, epoch=fold.epoch,
                seq=fold.seq, lineage=fold.lineage, fingerprint=fold.fingerprint or "",
                time_ms=int(time.time() * 1000))
    learn_s = time.perf_counter() - began
    claim = learner.event(Claimed("bench"))
    value = encode_event(claim)
    head = [type("H", (), {"offset": 0, "key": MODEL.encode(), "value": value,
                           "headers": record_headers(claim, value, learner.key)})()]
    result: dict[str, Any] = {
        "model": next(iter(spec.pipeline[-1])), "steps": count,
        "learner_us_per_step": round(learn_s / count * 1e6, 2), "state_every": state_every,
        "state_bytes": len(b"".join(next(iter(states.values()), [])))}
    for catch_up in ("examples", "state"):
        replica_spec = dataclasses.replace(spec, replica_catch_up=catch_up)
        replica = Learner(OnlineModel(replica_spec), cast(Any, None), cast(Any, None),
                          b"k" * 32, snapshot_every_steps=10**9, snapshot_every_s=1e9,
                          id_window=s.history.id_window, probe_size=s.history.probe_size)
        follower = ReplicaFollower(s, [replica], WorkerStats())
        follower.apply(cast(Any, head))
        began = time.perf_counter()
        for n, record in enumerate(history, start=1):
            follower.apply([record])
            if catch_up == "state" and n in states:
                assembler = StateAssembler()
                state = [assembler.add(v) for v in states[n]][-1]
                assert state is not None
                follower._waiting[MODEL] = state
                follower.load_states()
        spent = time.perf_counter() - began
        assert replica.fold.seq == count and (catch_up == "examples" or replica.model.seq
                                              == count - count % state_every)
        result[f"{catch_up}_us_per_step"] = round(spent / count * 1e6, 2)
    return result


def catch_up_costs(settings: Settings, count: int) -> dict[str, float]:
    """Re-applying Learned examples (per step) vs loading a snapshot (per load)."""
    examples = examples_of_dataset(settings, count)
    replica = OnlineModel(settings.models[0])
    began = time.perf_counter()
    apply_effects(replica, [Learn(tuple(examples))], b"k" * 32)
    per_step_us = (time.perf_counter() - began) / count * 1e6
    learner = _learner(settings)
    learner.model = replica
    # a learner's snapshot carries the dedup window too (history.id_window event ids)
    learner.fold.recent_ids.extend([f"run-{i}" for i in range(settings.history.id_window)])
    chunks = learner.snapshot_events()
    probe = learner.fold.snapshots[-1] if learner.fold.snapshots else None
    loads = []
    for _ in range(20):
        began = time.perf_counter()
        if probe is not None:
            load_snapshot(probe, b"k" * 32)
        loads.append(time.perf_counter() - began)
    load_ms = statistics.median(loads) * 1000
    size = sum(len(getattr(e.body, "data", b"")) for e in chunks)
    began = time.perf_counter()
    model_only = pickle.loads(pickle.dumps(replica.estimator))  # the model, no window
    model_ms = (time.perf_counter() - began) * 1000
    publish, load = [], []
    for _ in range(20):  # replica_catch_up = "state": what the learner and a replica pay
        began = time.perf_counter()
        values = encode_state(replica.estimator, b"k" * 32, model=MODEL, epoch=1, seq=count,
                              lineage=0, fingerprint="f", time_ms=0)
        publish.append(time.perf_counter() - began)
        began = time.perf_counter()
        assembler = StateAssembler()
        state = [assembler.add(v) for v in values][-1]
        assert state is not None
        load_state(state, b"k" * 32)
        load.append(time.perf_counter() - began)
    return {"state_publish_ms": round(statistics.median(publish) * 1000, 3),
            "state_load_ms": round(statistics.median(load) * 1000, 3),
            "state_bytes": sum(len(v) for v in values),
            "state_break_even_steps": round(statistics.median(load) * 1e6 / per_step_us),
            "reapply_us_per_step": round(per_step_us, 2), "snapshot_load_ms": round(load_ms, 3),
            "snapshot_bytes": size, "break_even_steps": round(load_ms * 1000 / per_step_us),
            "model_only_roundtrip_ms": round(model_ms, 3),
            "model_only_bytes": len(pickle.dumps(model_only))}


def staleness(settings: Settings, rate: float, seconds: float, catch_up: str
              ) -> list[dict[str, Any]]:
    """Three workers under a steady ``rate``: each replica's staleness and CPU per event."""
    s, env = fresh(settings)
    config = CONFIG
    if catch_up != "examples":  # a per-model setting: a config of its own
        config = Path(os.environ.get("TMPDIR", "/tmp")) / f"replicas-{uuid.uuid4().hex}.toml"
        head, _, tail = CONFIG.read_text().partition(f'name = "{MODEL}"\n')
        config.write_text(f'{head}name = "{MODEL}"\nreplica_catch_up = "{catch_up}"\n{tail}')
    children = [Child(env, config) for _ in range(3)]
    try:
        wait(lambda: settled(children), 120, "3 workers settled")
        want = int(rate * seconds)
        cpu_before = [c.cpu_s() for c in children]
        asyncio.run(produce(s, "agrawal", want, rate, seed=5))
        wait(lambda: all(c.seq() >= want for c in children), 120, "replicas caught up")
        cpu = [c.cpu_s() - before for c, before in zip(children, cpu_before, strict=True)]
        stats = [c.get("/riverbed/stats") or {} for c in children]
    finally:
        for child in children:
            child.kill()
        if config != CONFIG:
            config.unlink()
    return [dict(st["replicas"][MODEL], role=st["role"], catch_up=catch_up,
                 cpu_us_per_event=round(used / want * 1e6, 1))
            for st, used in zip(stats, cpu, strict=True) if st.get("role") == "replica"]


def learner_of(children: list[Child]) -> Child | None:
    """The child that says it is the learner (None: none answers so)."""
    return next((c for c in children if c.role() == "learner"), None)


def failover(settings: Settings, kills: int, rate: float) -> list[dict[str, float]]:
    s, env = fresh(settings)
    children = [Child(env) for _ in range(3)]
    import subprocess

    from riverbed.streams.broker import die_with_parent
    producer = subprocess.Popen(
        [sys.executable, "-c", "import asyncio,sys,dataclasses; "
         "from riverbed.streams.produce import produce; "
         "from riverbed.streams.config import load_settings; "
         "s=load_settings(sys.argv[1], env=__import__('os').environ); "
         "asyncio.run(produce(s, 'agrawal', int(sys.argv[2]), float(sys.argv[3])))",
         str(CONFIG), str(int(rate * 3600)), str(rate)], env=env, cwd=ROOT,  # killed at the end
        preexec_fn=die_with_parent)
    rounds = []
    try:
        for _ in range(kills):
            wait(lambda: settled(children), 120, "settled")
            found: list[Child] = []  # the learner as seen by the predicate (a page can time out)
            wait(lambda: bool(found.extend(c for c in [learner_of(children)] if c) or found),
                 30, "the learner answers")
            learner = found[0]
            wait(lambda a=learner: a.seq() > 0, 60, "learning")
            time.sleep(2)  # let it run a while (pacing, not synchronisation)
            killed = time.monotonic()
            learner.kill()
            children.remove(learner)
            found.clear()
            role = wait(lambda: bool(found.extend(c for c in [learner_of(children)] if c)
                                     or found), 60, "new learner")
            new = found[0]
            start_seq = new.seq()
            try:
                learning = wait(lambda n=new, q=start_seq: n.seq() > q, 60, "learning again")
            except SystemExit:
                print(json.dumps([c.get("/riverbed/stats") for c in children]), file=sys.stderr)
                raise
            rounds.append({"role_s": round(role - killed, 3),
                           "learning_s": round(learning - killed, 3)})
            print(f"kill {len(rounds)}: learner after {rounds[-1]['role_s']:.2f}s, "
                  f"learning after {rounds[-1]['learning_s']:.2f}s", file=sys.stderr,
                  flush=True)
            children.append(Child(env))
    finally:
        producer.kill()
        for child in children:
            child.kill()
    return rounds


PARTS = ("throughput", "learner", "staleness", "failover")


def local_broker(kind: str) -> Any:
    """The embedded Tansu, or Apache Kafka from its jars."""
    if kind == "kafka":
        from riverbed.streams.kafka_broker import KafkaBroker, kafka_available

        missing = kafka_available()
        if missing is not None:
            raise SystemExit(missing)
        return KafkaBroker()
    return EmbeddedBroker()


def print_tables(result: dict[str, Any]) -> None:
    if "throughput" in result:
        base = result["throughput"][0]["events_per_s"]
        print(f"host ceiling, two CPU-bound processes / one: "
              f"{result['host_two_process_ceiling']}x")
        print("| workers | events in window | events/s | vs 1 worker |")
        print("|---|---|---|---|")
        for row in result["throughput"]:
            print(f"| {row['workers']} | {row['events']:,} | {row['events_per_s']:,.0f} | "
                  f"{row['events_per_s'] / base:.2f}x (1 worker: {base:,.0f}/s) |")
    if "learner" in result:
        ln, cu = result["learner"], result["catch_up"]
        print(f"learner ceiling: {ln['learner_per_s']:,} examples/s vs River learn_one alone "
              f"{ln['river_per_s']:,}/s (ratio {ln['ratio']})")
        print(f"catch-up: re-apply {cu['reapply_us_per_step']} us/step per replica; snapshot "
              f"load {cu['snapshot_load_ms']} ms ({cu['snapshot_bytes']:,} B); break-even "
              f"{cu['break_even_steps']:,} steps; the model alone (no dedup window) "
              f"{cu['model_only_roundtrip_ms']} ms, {cu['model_only_bytes']:,} B; a "
              f"published state: {cu['state_publish_ms']} ms to sign and encode, "
              f"{cu['state_load_ms']} ms to verify and load ({cu['state_bytes']:,} B; "
              f"break-even {cu['state_break_even_steps']:,} steps)")
    if result.get("replica_follower"):
        print("a replica's CPU per learn step, in-process (decode + fold + catch up):")
        print("| model | learner us/step | examples: us/step | state every N steps: "
              "us/step | state bytes |")
        print("|---|---|---|---|---|")
        for row in result["replica_follower"]:
            print(f"| {row['model']} | {row['learner_us_per_step']} | "
                  f"{row['examples_us_per_step']} | {row['state_us_per_step']} "
                  f"(N={row['state_every']}) | {row['state_bytes']:,} |")
    if result.get("staleness"):
        print(f"staleness at {result['rate']:,.0f} events/s, 3 workers:")
        print("| catch-up | p50 steps | p50 ms | p99 steps | p99 ms | catch-ups | "
              "replica CPU us/event |")
        print("|---|---|---|---|---|---|---|")
        for row in result["staleness"]:
            print(f"| {row['catch_up']} | {row['p50_steps']} | {row['p50_ms']} | "
                  f"{row['p99_steps']} | {row['p99_ms']} | {row['samples']} | "
                  f"{row['cpu_us_per_event']} |")
    if "failover" in result:
        f = result["failover"]
        print(f"failover ({len(f['rounds'])} kills): median to new learner "
              f"{f['median_role_s']}s, to its first learn step {f['median_learning_s']}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "replicas.json"))
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                        help="the embedded Tansu, or Apache Kafka from its jars")
    parser.add_argument("--only", nargs="*", default=list(PARTS), choices=PARTS)
    args = parser.parse_args()
    result: dict[str, Any] = {"events": args.events, "rate": args.rate, "broker": args.broker}
    with local_broker(args.broker) as broker:
        settings = load_settings(CONFIG, env={}).with_bootstrap(broker.bootstrap_servers)
        if "throughput" in args.only:
            result["host_two_process_ceiling"] = round(two_process_scaling(), 3)
            result["throughput"] = [throughput(settings, n, args.events) for n in (1, 2, 3)]
        if "learner" in args.only:
            result["learner"] = learner_ceiling(settings, 20_000)
            result["catch_up"] = catch_up_costs(settings, 20_000)
            result["replica_follower"] = [follower_costs(settings, 20_000),
                                          follower_costs(settings, 4_000, FOREST)]
        if "staleness" in args.only:
            result["staleness"] = [row for catch_up in ("examples", "state")
                                   for row in staleness(settings, args.rate, args.seconds,
                                                        catch_up)]
        if "failover" in args.only:
            rounds = failover(settings, args.kills, 2000.0)
            result["failover"] = {"rounds": rounds, "median_role_s": statistics.median(
                r["role_s"] for r in rounds), "median_learning_s":
                statistics.median(r["learning_s"] for r in rounds)}
    print_tables(result)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
