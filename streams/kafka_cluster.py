"""A cluster of Apache Kafka 4 nodes (KRaft) on loopback, for fault tests and benchmarks.

    with KafkaCluster(brokers=3) as cluster:          # 3 combined broker+controller nodes
        cluster.bootstrap_servers                      # "127.0.0.1:p1,127.0.0.1:p2,..."
        cluster.stop_node(1, signal.SIGKILL)           # node 1 is gone (data kept)
        cluster.signal_node(2, signal.SIGSTOP)         # ... or frozen, until SIGCONT
        cluster.start_node(1)                          # back on its log dir and ports

    KafkaCluster(brokers=3, controllers=1)             # split: 1 controller + 3 brokers

``controllers=0`` (the default) makes every node a combined broker and controller: they
all vote. With ``controllers=N`` the first N nodes (ids 1..N) are controller-only and the
brokers follow (ids N+1..). Every node shares one cluster id and one static
``controller.quorum.voters``, runs in its own JVM (:class:`KafkaBroker`) with its log dir
under the cluster's work dir, and is stopped by PID. :meth:`start` launches every node and
returns once every broker answers (a broker opens its client port only when registered
with the quorum and unfenced). :meth:`stop` (and the context manager, ``atexit``, the
kernel via ``PR_SET_PDEATHSIG``) stops them all; the work dir is removed after a clean run
and kept, its path printed, when something failed.

Internal topics (consumer offsets, transactions, share groups) get replication factor
``min(3, brokers)`` so a consumer group survives one broker going away.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from riverbed.streams.broker import free_port
from riverbed.streams.errors import BrokerError
from riverbed.streams.kafka_broker import (
    DEFAULT_JVM_OPTIONS,
    KafkaBroker,
    cluster_id,
    kafka_available,
)

#: per node: four JVMs share a small machine
CLUSTER_JVM_OPTIONS = tuple(o if not o.startswith("-Xmx") else "-Xmx320m"
                            for o in DEFAULT_JVM_OPTIONS)


def _replicated_internals(brokers: int) -> dict[str, str]:
    rf = str(min(3, brokers))
    isr = str(min(2, brokers))
    return {
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
    }


class KafkaCluster:
    """``brokers`` Kafka brokers and their KRaft quorum; see the module docstring.

    ``nodes`` lists every node (controllers first); ``brokers_`` only those serving
    clients. Nodes are addressed by index into ``nodes``. ``settings`` add to every node's
    ``server.properties``.
    """

    def __init__(
        self, brokers: int = 3, controllers: int = 0, host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = CLUSTER_JVM_OPTIONS, libs: Path | None = None,
    ) -> None:
        if brokers < 1 or controllers < 0:
            raise BrokerError(f"a cluster needs >= 1 broker and >= 0 controllers, got "
                              f"{brokers} and {controllers}")
        self.cluster_id = cluster_id()
        self.work_dir = Path(tempfile.mkdtemp(prefix="riverbed-kafka-cluster-"))
        self._keep = False
        #: nodes sent SIGSTOP (and not SIGCONT) by signal_node: stopped first
        self._frozen: set[int] = set()
        roles: list[tuple[str, ...]] = [("controller",)] * controllers + (
            [("broker",)] * brokers if controllers else [("broker", "controller")] * brokers)
        ports = self._distinct_ports(2 * len(roles), host)
        voters = ",".join(f"{i + 1}@{host}:{ports[2 * i + 1]}"
                          for i, r in enumerate(roles) if "controller" in r)
        merged = {**_replicated_internals(brokers), **(settings or {})}
        self.nodes: list[KafkaBroker] = [
            KafkaBroker(port=ports[2 * i], controller_port=ports[2 * i + 1], host=host,
                        node_id=i + 1, roles=r, quorum_voters=voters,
                        cluster_id=self.cluster_id, settings=merged,
                        work_dir=self.work_dir / f"node-{i + 1}",
                        data_dir=self.work_dir / f"data-{i + 1}",
                        jvm_options=jvm_options, libs=libs)
            for i, r in enumerate(roles)]

    @staticmethod
    def _distinct_ports(count: int, host: str) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port(host)
            if port not in ports:
                ports.append(port)
        return ports

    @property
    def brokers(self) -> list[KafkaBroker]:
        """The nodes that serve clients."""
        return [n for n in self.nodes if n.is_broker]

    @property
    def bootstrap_servers(self) -> str:
        """Every broker's ``host:port``, comma-separated."""
        return ",".join(n.bootstrap_servers for n in self.brokers)

    def node_of(self, broker_id: int) -> int:
        """The index in :attr:`nodes` of the node whose Kafka ``node.id`` is ``broker_id``
        (what metadata calls a partition's leader)."""
        for index, node in enumerate(self.nodes):
            if node.node_id == broker_id:
                return index
        raise BrokerError(f"no node with node.id {broker_id}")

    def start(self, timeout_s: float = 120.0) -> Self:
        """Launch every node, then wait until every broker (and controller) answers.
        BrokerError (every node stopped, logs kept) otherwise."""
        reason = kafka_available(self.nodes[0].libs)
        if reason:
            raise BrokerError(f"Apache Kafka cannot run here: {reason}")
        atexit.register(self.stop)
        try:
            # formatting starts a JVM per node: in parallel; the nodes themselves are
            # launched from this thread (their PR_SET_PDEATHSIG follows the thread)
            with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
                bases = list(pool.map(lambda n: n.prepare(), self.nodes))
            for node, base in zip(self.nodes, bases, strict=True):
                node.launch(base)
            for node in self.nodes:
                node.wait_ready(timeout_s)
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def stop_node(self, index: int, sig: signal.Signals = signal.SIGTERM,
                  grace_s: float = 15.0) -> None:
        """Send ``sig`` to node ``index`` (SIGTERM: controlled shutdown; SIGKILL: a crash)
        and wait until it exited (SIGKILL after ``grace_s``). Its log dir stays for
        :meth:`start_node`."""
        self.nodes[index].stop(grace_s=grace_s, sig=sig)

    def start_node(self, index: int, timeout_s: float = 60.0) -> None:
        """Start node ``index`` again on its log dir and ports; returns once it answers."""
        self.nodes[index].start(timeout_s)

    def signal_node(self, index: int, sig: signal.Signals) -> None:
        """Send ``sig`` to a running node without waiting (SIGSTOP/SIGCONT: a slow node)."""
        node = self.nodes[index]
        if node.process is None or node.process.poll() is not None:
            raise BrokerError(f"node {index} is not running")
        node.process.send_signal(sig)
        if sig == signal.SIGSTOP:
            self._frozen.add(index)
        elif sig == signal.SIGCONT:
            self._frozen.discard(index)

    def log_of(self, index: int) -> Path:
        """Node ``index``'s ``server.log``."""
        return self.work_dir / f"node-{index + 1}" / "server.log"

    def stop(self, keep: bool = False) -> None:
        """Stop every node by PID (SIGTERM, SIGCONT for a frozen one, SIGKILL after a grace
        period); safe to call twice. The work dir is removed unless ``keep`` or a node died
        or needed SIGKILL (its path is printed to stderr then)."""
        atexit.unregister(self.stop)
        # frozen nodes first, while the quorum they need for a controlled shutdown is there
        # (thawed after the others had gone, one waited for it until SIGKILL); then all
        # brokers at once (each waits for its controlled shutdown), then the quorum
        frozen = [n for i, n in enumerate(self.nodes) if i in self._frozen]
        self._frozen.clear()
        stages = [frozen, [n for n in self.nodes if n.is_broker and n not in frozen],
                  [n for n in self.nodes if not n.is_broker and n not in frozen]]
        for stage in (s for s in stages if s):
            with concurrent.futures.ThreadPoolExecutor(len(stage)) as pool:
                list(pool.map(lambda n: n.stop(keep=keep), stage))
        self._keep = keep or self._keep or any(n.logs_kept for n in self.nodes)
        if not self.work_dir.exists():
            return
        if self._keep:
            print(f"riverbed: Kafka cluster logs kept in {self.work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep=exc_type is not None)
