"""A real Apache Kafka 4 node (KRaft) starts from the pinned jars, serves aiokafka (admin,
idempotent producer, consumer group with riverbed's short session timeout), keeps its data
across a restart on the same log dir, and leaves nothing behind when stopped.

Without Java or the fetched jars these tests skip with the reason -- except under
``CI=true``, where they fail (CI fetches the jars first: .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from riverbed.streams.broker import port_in_use
from riverbed.streams.errors import BrokerError
from riverbed.streams.kafka_broker import KAFKA_VERSION, POM, KafkaBroker, kafka_available
from tests.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.own_broker]


def require_kafka() -> None:
    """Skip with the reason Apache Kafka cannot run here; under CI=true, fail instead."""
    reason = kafka_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but Apache Kafka cannot run: {reason}")
    pytest.skip(reason)


async def _round_trip(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    """Produce ``values`` (idempotent, acks=all) and read the whole topic back in a group."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=str(i).encode())
    finally:
        await producer.stop()
    return await _read_all(bootstrap, topic, expect=len(values))


async def _read_all(bootstrap: str, topic: str, expect: int, group: str = "g1") -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=1500, heartbeat_interval_ms=500)
    await consumer.start()
    got: list[bytes] = []
    try:
        for _ in range(50):  # at most ~25 s
            batches = await consumer.getmany(timeout_ms=500)
            got += [m.value for records in batches.values() for m in records if m.value]
            if len(got) >= expect:
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_kafka_node_serves_clients_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_kafka()
    broker = KafkaBroker(data_dir=tmp_path / "kraft")
    with broker:
        pid, port, work_dir = broker.pid, broker.port, broker.work_dir
        assert pid is not None and pid_alive(pid) and work_dir is not None
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kb.events", 2, 1, topic_configs={
                "retention.ms": "-1", "cleanup.policy": "delete"})])
            described = await admin.describe_topics(["kb.events"])
        finally:
            await admin.close()
        assert len(described[0]["partitions"]) == 2
        values = [f"v{i}".encode() for i in range(6)]
        assert sorted(await _round_trip(broker.bootstrap_servers, "kb.events", values)) == values
    assert broker.process is None and broker.pid is None
    assert not pid_alive(pid)
    assert not port_in_use(port) and not port_in_use(broker.controller_port)
    assert not work_dir.exists()

    # the same node on the same log dir (kept: it is the caller's): the records are still there
    with broker:
        second_pid = broker.pid
        assert second_pid is not None and second_pid != pid
        again = await _read_all(broker.bootstrap_servers, "kb.events", expect=6, group="g2")
        assert sorted(again) == values
    assert not pid_alive(second_pid) and not port_in_use(port)
    assert (tmp_path / "kraft" / "meta.properties").exists()


def test_kafka_dies_with_its_owner_even_on_sigkill() -> None:
    require_kafka()
    script = textwrap.dedent("""
        import time
        from riverbed.streams.kafka_broker import KafkaBroker
        b = KafkaBroker().start()
        print(b.pid, b.work_dir, flush=True)
        time.sleep(120)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             cwd=Path(__file__).resolve().parents[2])
    assert owner.stdout is not None
    pid_text, _, work_dir = owner.stdout.readline().decode().strip().partition(" ")
    try:
        broker_pid = int(pid_text)
        assert pid_alive(broker_pid)
        owner.kill()
        owner.wait()
        end = time.monotonic() + 10.0  # deadline for the kernel to deliver PDEATHSIG
        while pid_alive(broker_pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert not pid_alive(broker_pid), "Kafka outlived its owner"
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
        if work_dir:  # its owner died before it could clean up: the test does
            shutil.rmtree(work_dir, ignore_errors=True)


def test_missing_jars_are_a_clear_reason(tmp_path: Path) -> None:
    reason = kafka_available(libs=tmp_path)
    assert reason is not None
    if reason.startswith("java"):  # no Java at all: that is the reason then
        return
    assert reason.startswith(f"Kafka {KAFKA_VERSION} jars not fetched: run mvn ")
    assert str(POM) in reason and str(tmp_path) in reason
    with pytest.raises(BrokerError, match="jars not fetched"):
        KafkaBroker(libs=tmp_path).start()


def test_python_pins_the_version_of_the_pom() -> None:
    pom = POM.read_text()
    assert re.search(rf"<kafka.version>{re.escape(KAFKA_VERSION)}</kafka.version>", pom)


def test_a_broker_that_cannot_start_keeps_its_log(capsys: pytest.CaptureFixture[str]) -> None:
    require_kafka()
    broker = KafkaBroker(settings={"num.partitions": "many"})
    with pytest.raises(BrokerError, match=r"num\.partitions.*log kept in"):
        broker.start()
    assert broker.process is None and broker.work_dir is not None
    try:
        assert "num.partitions" in (broker.work_dir / "server.log").read_text()
        assert str(broker.work_dir) in capsys.readouterr().err
    finally:
        shutil.rmtree(broker.work_dir)


async def test_riverbed_broker_kafka_is_a_durable_local_broker(tmp_path: Path) -> None:
    """``riverbed broker --kafka`` serves until SIGTERM and keeps its data for the next run."""
    require_kafka()
    from riverbed.streams.broker import free_port, probe_bootstrap

    port = free_port()
    data = tmp_path / "kafka-data"

    def start() -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "broker", "--kafka", "--port",
             str(port), "--data-dir", str(data)], stderr=subprocess.PIPE, text=True)
        assert child.stderr is not None
        line = child.stderr.readline()  # the one line it prints once it answers
        assert "Apache Kafka" in line and f"127.0.0.1:{port}" in line, line
        probe_bootstrap(f"127.0.0.1:{port}", 5.0)
        return child

    child = start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kept", 1, 1)])
        finally:
            await admin.close()
        assert await _round_trip(f"127.0.0.1:{port}", "kept", [b"a", b"b"]) == [b"a", b"b"]
    finally:
        child.terminate()
        assert child.wait(timeout=60) == 0
    assert not port_in_use(port)
    child = start()  # the same log dir: the records are still there
    try:
        assert await _read_all(f"127.0.0.1:{port}", "kept", 2, group="again") == [b"a", b"b"]
    finally:
        child.terminate()
        assert child.wait(timeout=60) == 0
