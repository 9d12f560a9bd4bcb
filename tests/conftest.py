"""Shared fixtures: one embedded broker per session, unique topics and groups per test."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from riverbed.streams.broker import EmbeddedBroker
from riverbed.streams.config import Settings, load_settings
from riverbed.streams.kafka_broker import KafkaBroker, kafka_available

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "riverbed.toml"


@pytest.fixture(scope="session")
def example_settings() -> Settings:
    """The example config shipped in the repo (what the demo uses)."""
    return load_settings(CONFIG, env={})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite runs on several cores (pytest-xdist, ``--dist loadgroup``): the tests
    marked ``heavy`` join one of two groups, each run test by test by one test process:
    those that start their own brokers (JVM clusters, broker faults, transactions on a
    Kafka of their own) and those that run several workers against the session's broker
    (SIGKILLs, standbys, replicas). So at most two heavy tests run at once, never two of
    the same kind; light tests run beside them."""
    for item in items:
        if item.get_closest_marker("heavy") is not None:
            own = item.get_closest_marker("own_broker") is not None
            item.add_marker(pytest.mark.xdist_group("heavy-own-broker" if own else "heavy"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker", choices=("embedded", "kafka"),
        default=os.environ.get("RIVERBED_TEST_BROKER", "embedded"),
        help="broker of the integration tests: the embedded Tansu (default) or Apache Kafka "
             "run from its jars (env RIVERBED_TEST_BROKER)")


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker | KafkaBroker]:
    """The session's broker (``--broker``); stopped (by PID) at the end of the session.
    Apache Kafka missing: the tests skip with the reason, except under CI=true."""
    if request.config.getoption("--broker") == "kafka":
        missing = kafka_available()
        if missing is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"--broker kafka under CI=true: {missing}")
            pytest.skip(missing)
        with KafkaBroker() as kafka:
            yield kafka
        return
    with EmbeddedBroker() as running:
        yield running
    assert running.process is None


def unique_settings(base: Settings, bootstrap: str, **limits: object) -> Settings:
    """``base`` with uuid topic names and group, pointed at ``bootstrap``."""
    tag = uuid.uuid4().hex[:10]
    topics = dataclasses.replace(
        base.topics, **{f.name: f"t{tag}.{f.name}" for f in dataclasses.fields(base.topics)
                        if isinstance(getattr(base.topics, f.name), str)})
    worker = dataclasses.replace(base.worker, group_id=f"g{tag}",
                                 fetch_max_wait_ms=20, commit_interval_s=0.2)
    lim = dataclasses.replace(base.limits, **limits)  # type: ignore[arg-type]
    return dataclasses.replace(base.with_bootstrap(bootstrap), topics=topics, worker=worker,
                               limits=lim)


@pytest.fixture
def settings(example_settings: Settings, broker: EmbeddedBroker) -> Settings:
    """Example settings on the session broker with this test's own topics and group."""
    return unique_settings(example_settings, broker.bootstrap_servers)


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())
