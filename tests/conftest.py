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

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "riverbed.toml"


@pytest.fixture(scope="session")
def example_settings() -> Settings:
    """The example config shipped in the repo (what the demo uses)."""
    return load_settings(CONFIG, env={})


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The session's embedded broker; stopped (by PID) at the end of the session."""
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
