"""Predict latency of the worker's HTTP API: ``POST /models/{name}/predict``.

    python bench/api_latency.py                      # 500 single, 200 x 100-event requests
    python bench/api_latency.py --single 1000 --batches 300 --stream-rate 2000

Starts the embedded broker and one ``riverbed worker`` process, trains the model on 5,000
events, then sends requests one after the other over one keep-alive connection and times
each from send to the last byte of the answer (client side, this machine): idle, and again
while a producer streams events at ``--stream-rate`` events/s (the worker predicts and
learns them under the same model lock). Prints a table and writes JSON
(``bench/results/api_latency.json``). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from riverbed.streams.broker import EmbeddedBroker, die_with_parent, free_port  # noqa: E402
from riverbed.streams.config import load_settings  # noqa: E402
from riverbed.streams.produce import produce  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"
EVENT = {"salary": 50000.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 3,
         "zipcode": 2, "hvalue": 100000.0, "hyears": 10, "loan": 20000.0}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time_requests(port: int, body: bytes, n: int) -> list[float]:
    """Milliseconds per request, ``n`` requests on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    timings = []
    for _ in range(n + 10):  # the first 10 warm up
        began = time.perf_counter()
        connection.request("POST", "/models/agrawal-lr/predict", body, headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise RuntimeError(f"predict answered {response.status}: {payload[:200]!r}")
        timings.append(elapsed)
    connection.close()
    return timings[10:]


def _wait_seq(port: int, seq: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/models")
            models = json.loads(connection.getresponse().read())["models"]
            if models and models[0]["seq"] >= seq:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the model did not reach seq {seq}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single", type=int, default=500, help="single-event requests")
    parser.add_argument("--batches", type=int, default=200, help="100-event requests")
    parser.add_argument("--stream-rate", type=float, default=2000.0,
                        help="events/s streamed during the second round (0: skip it)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" /
                        "api_latency.json")
    args = parser.parse_args()
    single = json.dumps({**EVENT, "event_id": "q"}).encode()
    hundred = json.dumps([{**EVENT, "event_id": f"q{i}", "age": 20 + i % 50}
                          for i in range(100)]).encode()
    with EmbeddedBroker() as broker:
        settings = load_settings(CONFIG, env={}).with_bootstrap(broker.bootstrap_servers)
        asyncio.run(ensure_topics(settings.broker, riverbed_topics(settings)))
        port = free_port()
        env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex()}
        worker = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(CONFIG),
             "--web-port", str(port)], env=env, cwd=ROOT, preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            trained = asyncio.run(produce(settings, "agrawal", 5000, seed=1))
            _wait_seq(port, trained.valid, 120)
            rows: list[dict[str, Any]] = []
            rounds = [("idle", 0.0)] + ([("streaming", args.stream_rate)]
                                        if args.stream_rate > 0 else [])
            for label, rate in rounds:
                stream = None
                if rate:
                    stream = subprocess.Popen(
                        [sys.executable, "-m", "riverbed.cli", "produce", "-c",
                         str(CONFIG), "-n", str(int(rate * 120)), "--rate", str(rate)],
                        env=env, cwd=ROOT, preexec_fn=die_with_parent,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(2)  # let the stream reach its rate
                try:
                    for name, body, n in (("1 event", single, args.single),
                                          ("100 events", hundred, args.batches)):
                        ms = _time_requests(port, body, n)
                        rows.append({"load": label, "request": name, "n": n,
                                     "p50_ms": round(statistics.median(ms), 3),
                                     "p99_ms": round(_quantile(ms, 0.99), 3),
                                     "max_ms": round(max(ms), 3)})
                finally:
                    if stream is not None:
                        stream.send_signal(signal.SIGTERM)
                        stream.wait()
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
    print(f"{'load':<10} {'request':<11} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['load']:<10} {r['request']:<11} {r['n']:>5} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
