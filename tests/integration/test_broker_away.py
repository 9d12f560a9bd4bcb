"""The broker goes away under a running worker (issue riverbed 6): a quiet log, ``ready``
false and ``riverbed_broker_connected`` 0 meanwhile, nothing lost when it comes back within
``broker.reconnect_timeout_s``, a non-zero exit with one line when it does not."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from riverbed.streams.broker import EmbeddedBroker, free_port
from riverbed.streams.config import Settings
from riverbed.streams.produce import produce
from tests.conftest import unique_settings
from tests.helpers import WorkerChild, provision, worker_env
from tests.netfault import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_broker]
OUTAGE_S = 20.0  # how long the fault lasts (the fault itself, not a wait for a condition)


@dataclasses.dataclass
class _Setup:
    settings: Settings
    proxy: TcpProxy
    env: dict[str, str]


@pytest.fixture
async def behind_proxy(example_settings: Settings, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Setup]:
    """A broker of its own, reached only through a proxy the test can cut."""
    monkeypatch.setenv("RIVERBED_TEST_WORKER_LOGS", str(tmp_path))
    port = free_port()
    with EmbeddedBroker(advertised_port=port) as broker:
        proxy = TcpProxy(port, broker.port)
        await proxy.start()
        try:
            settings = unique_settings(example_settings, f"127.0.0.1:{port}")
            await provision(settings)
            yield _Setup(settings, proxy, worker_env(settings, os.urandom(32).hex()))
        finally:
            await proxy.stop()


def _metric(child: WorkerChild, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{child.port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def _until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"{what}: not before the deadline"
        await asyncio.sleep(0.1)


async def test_a_worker_waits_quietly_for_the_broker_and_loses_nothing(
    behind_proxy: _Setup,
) -> None:
    setup = behind_proxy
    child = WorkerChild(setup.env)
    try:
        await _until(lambda: (child.get("/riverbed/stats") or {}).get("ready") is True, 90,
                     "ready")
        await produce(setup.settings, "agrawal", 2000, seed=1)
        await child.wait_for(lambda m: m["durable_seq"] >= 2000, 60)
        assert child.log_path is not None
        lines_before = len(Path(child.log_path).read_text().splitlines())
        await setup.proxy.cut()
        await _until(lambda: (child.get("/riverbed/stats") or {}).get("ready") is False, 15,
                     "ready false")
        assert _metric(child, "riverbed_broker_connected") == 0.0
        await asyncio.sleep(OUTAGE_S)  # the outage
        outage_lines = Path(child.log_path).read_text().splitlines()[lines_before:]
        assert len(outage_lines) <= OUTAGE_S / 5 + 4, "\n".join(outage_lines[-20:])
        assert child.process.poll() is None
        await setup.proxy.restore()
        returned = time.monotonic()
        await _until(lambda: (child.get("/riverbed/stats") or {}).get("ready") is True, 30,
                     "ready again")
        assert _metric(child, "riverbed_broker_connected") == 1.0
        await produce(setup.settings, "agrawal", 2000, seed=2)
        await child.wait_for(lambda m: m["seq"] > 2000, 60)
        print(f"first new learn step {time.monotonic() - returned:.1f}s after the broker "
              f"returned; {len(outage_lines)} log lines in a {OUTAGE_S:.0f}s outage")
        live = await child.wait_for(lambda m: m["durable_seq"] >= 4000, 60)
        assert live["seq"] == 4000 and live["epoch"] == 1  # nothing lost, no restart
    finally:
        child.kill()


async def test_a_worker_exits_with_one_line_when_the_broker_stays_away(
    behind_proxy: _Setup,
) -> None:
    setup = behind_proxy
    child = WorkerChild({**setup.env, "RIVERBED_BROKER__RECONNECT_TIMEOUT_S": "4"})
    try:
        await _until(lambda: (child.get("/riverbed/stats") or {}).get("ready") is True, 90,
                     "ready")
        await setup.proxy.cut()
        code = await asyncio.wait_for(asyncio.to_thread(child.process.wait), 60)
        assert code != 0
        assert child.log_path is not None
        log = Path(child.log_path).read_text()
        assert "Traceback" not in log
        assert len(re.findall(r"unreachable for more than 4s", log)) == 1
    finally:
        child.kill()
