"""Every user error is one clear line: no traceback, exit 2 for usage/config, 1 for runtime,
exactly one line on stderr naming the problem. Each case runs ``riverbed`` as a child
process, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from riverbed.streams.broker import EmbeddedBroker, free_port
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from tests.conftest import CONFIG, ROOT, unique_settings
from tests.helpers import provision, worker_env
from tests.integration._histories import Built, build_history

pytestmark = pytest.mark.integration
KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
NAME = "agrawal-lr"


def _event(**drop: bool) -> str:
    event = next(events("agrawal", 1, seed=5))
    return json.dumps({k: v for k, v in event.items() if k not in drop})


GOOD = _event()
BROKER_COMMANDS = {
    "worker": ["worker"], "produce": ["produce", "-n", "10"], "tail": ["tail", "riverbed.events"],
    "history": ["history", NAME], "top": ["top", "--once"], "replay": ["replay", NAME],
    "score": ["score", NAME], "rollback": ["rollback", NAME, "--to-seq", "1", "--reason", "x"],
}

# (id, args, stdin, exit code, text the one stderr line must contain, what it runs against)
# where: "none" (no broker needed), "empty" (a provisioned broker, no history), "history"
# (a history with checkpoint snapshots and a rollback, signed with KEY)
CASES: list[tuple[str, list[str], str, int, str, str]] = [
    *[(f"{cmd}-port-closed", [*args, "-b", "{closed}"], "", 1, "no broker reachable", "none")
      for cmd, args in BROKER_COMMANDS.items()],
    *[(f"{cmd}-host-unknown", [*args, "-b", "kafka.invalid:9092"], "", 1,
       "cannot resolve host 'kafka.invalid'", "none") for cmd, args in BROKER_COMMANDS.items()],
    ("history-unknown-model", ["history", "nosuchmodel"], "", 2, "unknown model 'nosuchmodel'",
     "none"),
    ("replay-unknown-model", ["replay", "nosuchmodel"], "", 2, "unknown model", "none"),
    ("score-unknown-model", ["score", "nosuchmodel"], GOOD, 2, "unknown model", "none"),
    ("rollback-unknown-model", ["rollback", "nosuchmodel", "--to-seq", "1", "--reason", "x"],
     "", 2, "unknown model", "none"),
    ("replay-to-time-yesterday", ["replay", NAME, "--to-time", "yesterday"], "", 2,
     "--to-time 'yesterday'", "none"),
    ("replay-negative-seq", ["replay", NAME, "--to-seq", "-1"], "", 2, "--to-seq", "none"),
    ("produce-negative-events", ["produce", "-n", "-5"], "", 2, "--events", "none"),
    ("produce-negative-rate", ["produce", "--rate", "-10"], "", 2, "--rate", "none"),
    ("produce-bad-fraction", ["produce", "--bad-fraction", "2"], "", 2, "--bad-fraction",
     "none"),
    ("produce-unknown-dataset", ["produce", "--dataset", "nope"], "", 2,
     "unknown dataset 'nope'", "none"),
    ("demo-unknown-dataset", ["demo", "--dataset", "nope"], "", 2, "unknown dataset 'nope'",
     "none"),
    ("config-is-a-directory", ["history", NAME, "-c", "{tmp}"], "", 2, "is a directory",
     "none"),
    ("config-missing-schema", ["history", NAME, "-c", "{missing_schema_config}"], "", 2,
     "event.schema", "none"),
    ("replay-seq-not-a-number", ["replay", NAME, "--to-seq", "abc"], "", 2,
     "Invalid value for '--to-seq'", "none"),
    ("unknown-option", ["produce", "--nope"], "", 2, "No such option: --nope", "none"),
    ("unknown-command", ["bogus"], "", 2, "No such command 'bogus'", "none"),
    ("broker-port-in-use", ["broker", "--port", "{broker_port}"], "", 1,
     "port {broker_port} is in use", "none"),
    ("history-no-history", ["history", NAME], "", 1, "has no history", "empty"),
    ("rollback-empty-history", ["rollback", NAME, "--to-seq", "0", "--reason", "x"], "", 1,
     "has no history", "empty"),
    ("score-empty-history", ["score", NAME], GOOD, 1, "has no history", "empty"),
    ("replay-beyond-history", ["replay", NAME, "--to-seq", "999999"], "", 1,
     "only reaches seq", "history"),
    ("score-beyond-history", ["score", NAME, "--seq", "999999"], GOOD, 1, "only reaches seq",
     "history"),
    ("replay-unknown-lineage", ["replay", NAME, "--lineage", "7"], "", 1, "no lineage 7",
     "history"),
    ("score-malformed-json", ["score", NAME], "{not json\n" + GOOD + "\n", 1,
     "line 1: not valid JSON", "history"),
    ("score-json-array", ["score", NAME], GOOD + "\n[1, 2]\n", 1,
     "line 2: expected a JSON object, got an array", "history"),
    ("score-missing-field", ["score", NAME], _event(salary=True) + "\n", 1,
     "missing field 'salary'", "history"),
    ("replay-verify-other-key", ["replay", NAME, "--verify"], "", 2, "HMAC mismatch",
     "history-other-key"),
    ("score-other-key", ["score", NAME], GOOD, 2, "HMAC mismatch", "history-other-key"),
]


@pytest.fixture(scope="module")
def history_settings(example_settings: Settings, broker: EmbeddedBroker) -> Settings:
    """A history with checkpoint snapshots and a rollback, signed with KEY."""
    built: Built = asyncio.run(build_history(
        unique_settings(example_settings, broker.bootstrap_servers), KEY, phases=(600,),
        rollback_to=300, after=100))
    return built.settings


@pytest.fixture(scope="module")
def histories(example_settings: Settings, broker: EmbeddedBroker,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the cases run against (the history itself: ``history_settings``, on demand)."""
    empty = unique_settings(example_settings, broker.bootstrap_servers)
    asyncio.run(provision(empty))
    tmp = tmp_path_factory.mktemp("cli-errors")
    config = tmp / "riverbed.toml"
    config.write_text(CONFIG.read_text().replace('schema = "agrawal_event"',
                                                 'schema = "missing.avsc"'))
    return {"empty": empty, "tmp": tmp, "config": config, "broker_port": broker.port}


@pytest.mark.parametrize(("args", "stdin", "code", "needle", "where"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line(histories: dict[str, Any], request: pytest.FixtureRequest,
                                args: list[str], stdin: str, code: int, needle: str,
                                where: str) -> None:
    values = {"closed": f"127.0.0.1:{free_port()}", "tmp": str(histories["tmp"]),
              "missing_schema_config": str(histories["config"]),
              "broker_port": str(histories["broker_port"])}
    args = [a.format(**values) for a in args]
    needle = needle.format(**values)
    if where == "none":
        env = {**os.environ, "RIVERBED_HISTORY__SNAPSHOT_KEY": KEY.hex()}
    else:
        settings = (histories["empty"] if where == "empty"
                    else request.getfixturevalue("history_settings"))
        env = worker_env(settings, (OTHER_KEY if where.endswith("other-key") else KEY).hex())
    if "-c" not in args and args[0] not in ("broker", "bogus"):
        args += ["-c", str(CONFIG)]
    done = subprocess.run([sys.executable, "-m", "riverbed.cli", *args], input=stdin,
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1, done.stderr
    assert needle in lines[0], lines[0]
    assert lines[0].startswith("error: ")
    assert done.returncode == code, (done.returncode, lines[0])


def test_score_goes_on_after_a_bad_line(history_settings: Settings) -> None:
    """The bad line is reported with its number; the lines after it are still scored."""
    done = subprocess.run(
        [sys.executable, "-m", "riverbed.cli", "score", NAME, "-c", str(CONFIG)],
        input=GOOD + "\n{oops\n" + _event() + "\n", cwd=ROOT, capture_output=True, text=True,
        env=worker_env(history_settings, KEY.hex()), timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "line 2" in done.stderr
    assert [json.loads(line)["model"] for line in done.stdout.splitlines()] == [NAME, NAME]


def test_no_broker_fails_within_seconds() -> None:
    """An unreachable broker is reported quickly (a bounded probe, no client retries)."""
    import time

    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "riverbed.cli", "replay", NAME, "-c", str(CONFIG),
         "-b", "10.255.255.1:9092"],  # non-routable: a connect() hangs (or a proxy answers)
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no broker reachable" in done.stderr
    assert time.monotonic() - began < 15
