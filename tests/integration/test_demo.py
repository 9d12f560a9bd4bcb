"""`riverbed demo` end to end, in a child process, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from riverbed.streams.telemetry import TIMING_SAMPLE
from tests.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_broker]
ROOT = Path(__file__).resolve().parents[2]


def test_demo_json_summary_and_no_process_left_behind() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "riverbed.cli", "demo", "--events", "3000", "--json"],
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
    final = done.stderr[done.stderr.rindex("riverbed demo"):]  # the last table shown
    row = next(line for line in final.splitlines() if f"{summary['events']:,}" in line)
    for value in (f"{summary['predictions']:,}", f"{summary['learned']:,}",
                  f"{summary['events_per_s']:,.0f}", f"{summary['dead_letters']:,}"):
        assert value in row, (value, row)


def test_demo_delayed_label_mode_and_its_metrics_endpoint(tmp_path: Path) -> None:
    scraped = tmp_path / "metrics.txt"
    done = subprocess.run(
        [sys.executable, "-m", "riverbed.cli", "demo", "--events", "3000", "--rate", "1500",
         "--label-delay", "0.5", "--json", "--scrape", str(scraped)], cwd=ROOT,
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["predictions"] == summary["valid_events"]
    assert summary["learned"] == summary["labelled"] == summary["valid_events"]
    assert summary["accuracy"] > 0.5
    assert "riverbed top" in done.stderr  # the live view was shown

    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(scraped.read_text()) for s in f.samples}
    names = {name for name, _ in samples}
    for metric in ("riverbed_events_total", "riverbed_predictions_total",
                   "riverbed_learn_steps_total", "riverbed_dead_letters_total",
                   "riverbed_model_seq", "riverbed_drift_events_total",
                   "riverbed_event_to_prediction_seconds_bucket", "riverbed_predict_seconds_count",
                   "riverbed_learn_seconds_count", "riverbed_model_metric",
                   "riverbed_model_version_metric", "riverbed_pending_labels",
                   "riverbed_expired_labels_total", "riverbed_labels_joined_total",
                   "riverbed_consumer_lag"):
        assert metric in names, metric
    model = (("model", "agrawal-lr"),)
    assert samples[("riverbed_predictions_total", model)] == summary["predictions"]
    assert samples[("riverbed_learn_steps_total", model)] == summary["learned"]
    assert sum(v for (n, _), v in samples.items() if n == "riverbed_dead_letters_total") \
        == summary["dead_letters"]
    assert samples[("riverbed_pending_labels", ())] == 0          # every label arrived
    assert samples[("riverbed_labels_joined_total", ())] == summary["labelled"]
    assert samples[("riverbed_predict_seconds_count", ())] \
        == summary["predictions"] // TIMING_SAMPLE  # one predict call in N is timed
    accuracy = samples[("riverbed_model_metric", (("metric", "Accuracy"),) + model)]
    assert 0.5 < accuracy <= 1.0
