"""`riverbed demo` end to end, in a child process, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_demo_json_summary_and_no_process_left_behind() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--events", "3000", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("events", "predictions", "dead_letters", "learned", "accuracy", "events_per_s"):
        assert key in summary
    assert summary["events"] == 3000
    assert summary["predictions"] == summary["valid_events"] == summary["learned"]
    assert summary["dead_letters"] == summary["bad_events"] > 0
    assert summary["accuracy"] > 0.5
    assert not pid_alive(summary["broker_pid"]) and not pid_alive(summary["worker_pid"])


def test_demo_delayed_label_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--events", "3000", "--rate", "1500",
         "--label-delay", "0.5", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["predictions"] == summary["valid_events"]
    assert summary["learned"] == summary["labelled"] == summary["valid_events"]
    assert summary["accuracy"] > 0.5
    assert "riverbed top" in done.stderr  # the live view was shown
