"""A cluster of Apache Kafka 4 nodes (``streams/kafka_cluster.py``): split and combined
roles, one cluster id and quorum, replication that survives a broker going away, nodes
stopped and restarted by PID, nothing left behind.

Without Java or the fetched jars these tests skip with the reason -- except under
``CI=true``, where they fail."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from riverbed.streams.broker import port_in_use
from riverbed.streams.errors import BrokerError
from riverbed.streams.kafka_cluster import KafkaCluster
from tests.conftest import pid_alive
from tests.integration.test_kafka_broker import require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.own_broker, pytest.mark.slow, pytest.mark.heavy]


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, request_timeout_ms=30_000)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, expect: int, group: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=3000, heartbeat_interval_ms=500)
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            got += [m.value for records in batches.values() for m in records if m.value]
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _leader_and_isr(bootstrap: str, topic: str) -> tuple[int, list[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partition = (await admin.describe_topics([topic]))[0]["partitions"][0]
    finally:
        await admin.close()
    return partition["leader"], sorted(partition["isr"])


async def test_three_brokers_keep_serving_with_one_stopped() -> None:
    """1 controller + 3 brokers; replication 3, min.insync.replicas 2, acks=all: with the
    partition's leader stopped, producing and consuming still work (and its data stay)."""
    require_kafka()
    with KafkaCluster(brokers=3, controllers=1) as cluster:
        assert len(cluster.nodes) == 4 and len(cluster.brokers) == 3
        assert [n.roles for n in cluster.nodes] == [("controller",)] + [("broker",)] * 3
        assert len({n.cluster_id for n in cluster.nodes}) == 1
        assert len({n.pid for n in cluster.nodes}) == 4
        bootstrap = cluster.bootstrap_servers
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kc.events", 1, 3, topic_configs={
                "min.insync.replicas": "2"})])
        finally:
            await admin.close()
        before = [f"before-{i}".encode() for i in range(20)]
        await _produce(bootstrap, "kc.events", before)
        leader, isr = await _leader_and_isr(bootstrap, "kc.events")
        assert isr == [2, 3, 4]

        gone = cluster.node_of(leader)
        pid = cluster.nodes[gone].pid
        assert pid is not None
        cluster.stop_node(gone, signal.SIGKILL)
        assert not pid_alive(pid) and cluster.nodes[gone].process is None
        after = [f"after-{i}".encode() for i in range(20)]
        await _produce(bootstrap, "kc.events", after)  # 2 in sync >= min.insync.replicas
        got = await _consume(bootstrap, "kc.events", 40, group="kc")
        assert got == before + after
        new_leader, _ = await _leader_and_isr(bootstrap, "kc.events")
        assert new_leader != leader
        work_dir, pids = cluster.work_dir, [n.pid for n in cluster.nodes if n.pid]
        ports = [p for n in cluster.nodes for p in (n.port, n.controller_port)]
    assert all(not pid_alive(p) for p in pids)
    assert not any(port_in_use(p) for p in ports)
    assert not work_dir.exists()


async def test_combined_nodes_restart_on_their_log_dirs() -> None:
    """3 combined broker+controller nodes: one SIGKILLed and started again comes back on
    its log dir and ports, in sync, with the records it had."""
    require_kafka()
    with KafkaCluster(brokers=3) as cluster:
        assert all(n.roles == ("broker", "controller") for n in cluster.nodes)
        voters = {n.server_properties(n.work_dir or cluster.work_dir)[
            "controller.quorum.voters"] for n in cluster.nodes}
        assert len(voters) == 1 and voters.pop().count("@") == 3
        bootstrap = cluster.bootstrap_servers
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kc.kept", 1, 3)])
        finally:
            await admin.close()
        await _produce(bootstrap, "kc.kept", [b"a", b"b"])
        old_pid, port = cluster.nodes[0].pid, cluster.nodes[0].port
        cluster.stop_node(0, signal.SIGKILL)
        await _produce(bootstrap, "kc.kept", [b"c"])  # two voters of three: still a quorum
        cluster.start_node(0)
        assert cluster.nodes[0].pid not in (None, old_pid) and cluster.nodes[0].port == port
        deadline = time.monotonic() + 60  # the restarted replica catches up
        while (await _leader_and_isr(bootstrap, "kc.kept"))[1] != [1, 2, 3]:
            assert time.monotonic() < deadline, "node 1 did not rejoin the ISR"
            await asyncio.sleep(0.2)  # poll interval
        # read it from the restarted node alone
        assert await _consume(cluster.nodes[0].bootstrap_servers, "kc.kept", 3,
                              group="kc2") == [b"a", b"b", b"c"]
        cluster.signal_node(2, signal.SIGSTOP)  # frozen when the cluster stops
        work_dir, pids = cluster.work_dir, [n.pid for n in cluster.nodes if n.pid]
    # a clean stop (SIGTERM, SIGCONT): no node needed SIGKILL, so no logs were kept
    assert all(not pid_alive(p) for p in pids)
    assert not work_dir.exists()


def test_a_cluster_that_cannot_start_keeps_its_logs(capsys: pytest.CaptureFixture[str]) -> None:
    require_kafka()
    cluster = KafkaCluster(brokers=2, settings={"num.partitions": "many"})
    with pytest.raises(BrokerError, match=r"num\.partitions.*log kept in"):
        cluster.start()
    try:
        assert all(n.process is None for n in cluster.nodes)
        assert "num.partitions" in cluster.log_of(0).read_text()
        assert str(cluster.work_dir) in capsys.readouterr().err
    finally:
        shutil.rmtree(cluster.work_dir)
