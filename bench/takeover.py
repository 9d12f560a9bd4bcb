"""Takeover time of a standby when the active worker of a global model is SIGKILLed.

    python bench/takeover.py                 # 5 kills, 2 workers, 2,000 events/s
    python bench/takeover.py --kills 5 --rate 2000

Starts the embedded broker, two ``riverbed worker`` processes (one active, one standby) and
a steady producer. Each round SIGKILLs the active worker and measures, from the kill:
``role`` = the standby reports itself active (``/riverbed/stats``), and ``learning`` = its
model's seq moves past where it took over (the first new learn step). A new standby is
started after each kill. Prints a table and writes JSON (median of the rounds). The lease
session timeout (``worker.lease_session_timeout_ms``, 1.5 s by default) is the floor: a
SIGKILLed member is only noticed when its session expires.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from riverbed.streams.broker import (  # noqa: E402
    EmbeddedBroker,
    LocalBroker,
    die_with_parent,
    free_port,
)
from riverbed.streams.config import load_settings  # noqa: E402
from riverbed.streams.topics import ensure_topics, riverbed_topics  # noqa: E402

CONFIG = ROOT / "config" / "riverbed.toml"


class Child:
    """``riverbed worker`` in a child process."""

    def __init__(self, env: dict[str, str], config: Path = CONFIG) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(config),
             "--web-port", str(self.port)], env=env, cwd=ROOT, preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(self, page: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{page}", timeout=1) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def role(self) -> str | None:
        stats = self.get("/riverbed/stats")
        return None if stats is None else stats.get("role")

    def seq(self) -> int:
        models = self.get("/riverbed/models") or {}
        return int(models.get("agrawal-lr", {}).get("seq", -1))

    def cpu_s(self) -> float:
        """User + system CPU seconds the child has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def wait(predicate: Any, timeout_s: float, what: str) -> float:
    """Poll ``predicate`` every 10 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"{what}: not within {timeout_s}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--output", default="bench/results/takeover.json")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                        help="the embedded Tansu, or Apache Kafka from its jars")
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    if args.broker == "kafka":
        from riverbed.streams.kafka_broker import KafkaBroker, kafka_available

        missing = kafka_available()
        if missing is not None:
            raise SystemExit(missing)
        chosen: LocalBroker = KafkaBroker()
    else:
        chosen = EmbeddedBroker()
    with chosen as broker:  # type: ignore[attr-defined]
        settings = load_settings(CONFIG, env={}).with_bootstrap(broker.bootstrap_servers)
        asyncio.run(ensure_topics(settings.broker, riverbed_topics(settings)))
        env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "RIVERBED_HISTORY__SNAPSHOT_KEY": os.urandom(32).hex(),
               "RIVERBED_WORKER__PROFILE": "low-latency"}
        children = [Child(env), Child(env)]
        total = int(args.rate * (args.kills + 1) * 12)
        producer = subprocess.Popen(  # a steady stream for the whole run
            [sys.executable, "-c", "import asyncio,sys; "
             "from riverbed.streams.produce import produce; "
             "from riverbed.streams.config import load_settings; s=load_settings(sys.argv[1])"
             ".with_bootstrap(sys.argv[2]); asyncio.run(produce(s, 'agrawal', int(sys.argv[3]),"
             " float(sys.argv[4])))", str(CONFIG), broker.bootstrap_servers, str(total),
             str(args.rate)], cwd=ROOT, preexec_fn=die_with_parent)
        try:
            for _ in range(args.kills):
                wait(lambda: sorted(str(c.role()) for c in children) == ["active", "standby"],
                     120, "one active, one standby")
                active = next(c for c in children if c.role() == "active")
                standby = next(c for c in children if c is not active)
                wait(lambda a=active: a.seq() > 0, 60, "active learning")
                time.sleep(3)  # let it run a while (pacing, not synchronisation)
                killed = time.monotonic()
                active.kill()
                role = wait(lambda s=standby: s.role() == "active", 60, "standby took over")
                start_seq = standby.seq()
                learning = wait(lambda s=standby, q=start_seq: s.seq() > q, 60, "learning")
                rounds.append({"role_s": round(role - killed, 3),
                               "learning_s": round(learning - killed, 3)})
                print(f"kill {len(rounds)}: active again after {rounds[-1]['role_s']:.2f}s, "
                      f"learning after {rounds[-1]['learning_s']:.2f}s", flush=True)
                children.remove(active)
                children.append(Child(env))
        finally:
            producer.kill()
            for child in children:
                child.kill()
    result = {"broker": args.broker, "kills": len(rounds), "rate": args.rate,
              "median_role_s": statistics.median(r["role_s"] for r in rounds),
              "median_learning_s": statistics.median(r["learning_s"] for r in rounds),
              "rounds": rounds}
    print("| kills | median to active (s) | median to first learn step (s) |")
    print("|---|---|---|")
    print(f"| {result['kills']} | {result['median_role_s']:.2f} | "
          f"{result['median_learning_s']:.2f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
