"""Long fuzz run against a running worker (the suite's test_fuzz.py runs 4 examples).

    python -m tests.fuzz_long --examples 200      # from the repository root

Starts the embedded broker and a worker (child process), sends Hypothesis-generated
arbitrary bytes and schema-valid hostile records to the events and labels topics, checks
after every example that the broker's topics match the oracle (tests/fuzzing.py), and at
the end: the worker alive, every valid event predicted once, learned steps == distinct valid
labelled ids, every bad record a dead letter, ``replay --verify`` exit 0. Prints a table and
writes JSON (records tried, dead letters, crashes: must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from riverbed.streams.broker import EmbeddedBroker  # noqa: E402
from riverbed.streams.config import load_settings  # noqa: E402
from tests.conftest import CONFIG, unique_settings  # noqa: E402
from tests.fuzzing import Oracle, check_outcome, explain, fuzz  # noqa: E402
from tests.helpers import WorkerChild, provision, worker_env  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--output", default="fuzz-results.json")
    args = parser.parse_args()
    began = time.monotonic()
    crashed, failed = 0, False
    with EmbeddedBroker() as broker:
        settings = unique_settings(load_settings(CONFIG, env={}), broker.bootstrap_servers)
        asyncio.run(provision(settings))
        env = worker_env(settings, os.urandom(32).hex())
        child = WorkerChild(env)
        oracle = Oracle(settings)
        try:
            asyncio.run(child.wait_for(lambda model: model["epoch"] is not None, 60))
            alive = lambda: child.process.poll() is None  # noqa: E731
            fuzz(settings, oracle, alive, args.examples)
            asyncio.run(check_outcome(settings, oracle, alive, env))
        except Exception as exc:
            crashed, failed = int(child.process.poll() is not None), True
            print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            if not isinstance(exc, AssertionError):
                import traceback
                traceback.print_exception(exc)
            child.dump_tasks()  # kept with RIVERBED_TEST_WORKER_LOGS=DIR
            print(asyncio.run(explain(settings, oracle)), file=sys.stderr)
            models = child.get("/riverbed/models") or {}
            print(json.dumps(models), file=sys.stderr)
            stats = child.get("/riverbed/stats") or {}
            print(json.dumps({k: stats.get(k) for k in ("inputs", "dead_letters", "events",
                                                        "predictions")}), file=sys.stderr)
        finally:
            child.kill()
    if oracle.unexpected:
        print("decode raised other than DecodeError:", sorted(set(oracle.unexpected))[:10],
              file=sys.stderr)
    result = {"examples": args.examples, "records": oracle.records,
              "valid_events": len(oracle.valid_events), "learned": len(oracle.learned),
              "dead_letters": oracle.dead_letters, "worker_crashes": crashed,
              "seconds": round(time.monotonic() - began, 1)}
    print("| " + " | ".join(result) + " |")
    print("|" + "---|" * len(result))
    print("| " + " | ".join(str(v) for v in result.values()) + " |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    return 1 if crashed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
