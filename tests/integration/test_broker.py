"""The embedded broker starts, accepts Kafka clients, and never outlives its owner."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from riverbed.streams.broker import EmbeddedBroker
from riverbed.streams.errors import BrokerError
from tests.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.own_broker]


def test_no_broker_process_survives_the_context_manager() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None and pid_alive(pid)
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
    assert not pid_alive(pid)


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN"):
        EmbeddedBroker().start()


def test_binary_that_exits_early_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot bind' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(BrokerError, match="exited early with code 3.*boom"):
        EmbeddedBroker(binary=str(fake)).start()


def test_broker_dies_with_its_owner_even_on_sigkill() -> None:
    script = textwrap.dedent("""
        import sys, time
        from riverbed.streams.broker import EmbeddedBroker
        b = EmbeddedBroker().start()
        print(b.pid, flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             cwd=Path(__file__).resolve().parents[2])
    assert owner.stdout is not None
    broker_pid = int(owner.stdout.readline())
    assert pid_alive(broker_pid)
    owner.kill()
    owner.wait()
    owner.stdout.close()
    end = time.monotonic() + 10.0  # deadline for the kernel to deliver PDEATHSIG
    while pid_alive(broker_pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not pid_alive(broker_pid), "broker outlived its owner"
