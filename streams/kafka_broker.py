"""A real Apache Kafka 4.x broker (KRaft, one combined broker+controller node) for tests,
benchmarks and developers, run from the jars that ``deploy/kafka/pom.xml`` pins.

Java 17+ and the fetched jars are needed (:func:`kafka_available` says what is missing);
:func:`fetch_kafka` (or ``python -m riverbed.streams.kafka_broker fetch``) fetches the jars
once with Maven into the local Maven repository and copies them to :func:`kafka_libs_dir`;
offline afterwards.

:class:`KafkaBroker` mirrors :class:`~riverbed.streams.broker.EmbeddedBroker`: free loopback ports,
``start()`` returns once the broker answers a Kafka ``ApiVersions`` request (Kafka opens
its client listener only when the node is registered and unfenced, so an answer means
ready), stopped by PID (SIGTERM, then SIGKILL after a grace period) by :meth:`stop`, the
context manager, ``atexit``, and the kernel should this process die (``PR_SET_PDEATHSIG``).
Its work dir (``server.properties``, ``server.log``, the KRaft log dir ``data/``) is removed
on a clean stop and kept, with its path in the error, when something went wrong.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from riverbed.streams.broker import (
    LocalBroker,
    die_with_parent,
    free_port,
    port_in_use,
    probe_bootstrap,
)
from riverbed.streams.errors import BrokerError

#: Apache Kafka version; the same as ``kafka.version`` in deploy/kafka/pom.xml.
KAFKA_VERSION = "4.4.0"
#: the repository's Maven description of the broker's runtime classpath, and log4j2 config.
POM = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "pom.xml"
LOG4J2_CONFIG = POM.parent / "log4j2.properties"
#: small heap, light GC (2-core machines), no /tmp/hsperfdata_* left behind after a SIGKILL.
DEFAULT_JVM_OPTIONS = ("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:-UsePerfData",
                       "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
#: broker settings for fast single-node tests; riverbed provisions every topic itself.
TEST_SETTINGS: Mapping[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "500",  # riverbed's tests use 1500 and 3000 ms
}


def kafka_libs_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the broker's jars are cached: ``$RIVERBED_KAFKA_LIBS`` if set, else
    ``${XDG_CACHE_HOME:-~/.cache}/riverbed/kafka-<version>/libs``."""
    override = os.environ.get("RIVERBED_KAFKA_LIBS")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "riverbed" / f"kafka-{version}" / "libs"


def fetch_command(libs: Path | None = None) -> list[str]:
    """The one Maven command that fetches the broker's jars into ``libs``."""
    libs = libs or kafka_libs_dir()
    return ["mvn", "-q", "-B", "--no-transfer-progress", "-f", str(POM),
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}"]


def java_binary() -> str | None:
    """``$JAVA_HOME/bin/java`` if that exists, else ``java`` on PATH, else None."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], check=False, capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _libs_complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file() and (
        libs / f"kafka-clients-{version}.jar").is_file()


def kafka_available(libs: Path | None = None) -> str | None:
    """None if Java 17+ and the broker's jars are present; else the reason, in one line."""
    java = java_binary()
    if java is None:
        return "java not found (Apache Kafka 4 needs Java 17+ on PATH or in JAVA_HOME)"
    major = _java_major(java)
    if major is None:
        return f"cannot tell the version of {java}"
    if major < 17:
        return f"{java} is Java {major}; Apache Kafka 4 needs Java 17+"
    libs = libs or kafka_libs_dir()
    if not _libs_complete(libs, KAFKA_VERSION):
        return (f"Kafka {KAFKA_VERSION} jars not fetched: run "
                f"{shlex.join(fetch_command(libs))}")
    return None


def fetch_kafka(libs: Path | None = None, timeout_s: float = 900.0) -> Path:
    """Fetch the broker's jars with Maven (into the local Maven repository) and copy them to
    ``libs`` (atomically: a partial fetch never looks complete). Returns ``libs``; BrokerError
    (one line plus Maven's last lines) if Maven is missing or fails."""
    libs = libs or kafka_libs_dir()
    if _libs_complete(libs, KAFKA_VERSION):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("mvn not found: Maven is needed once to fetch the Kafka jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{libs.name}-", dir=libs.parent))
    try:
        command = fetch_command(staging)
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"fetching the Kafka jars took over {timeout_s:g}s") from exc
        if done.returncode != 0 or not _libs_complete(staging, KAFKA_VERSION):
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"fetching the Kafka jars failed (mvn exit {done.returncode}): "
                              f"{shlex.join(command)}\n{tail}")
        if libs.exists():  # incomplete leftovers
            shutil.rmtree(libs)
        staging.rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _without_stack_frames(text: str) -> list[str]:
    """The lines of a JVM's output that say something (no "\tat ..." / "... 3 more")."""
    return [line for line in text.strip().splitlines()
            if line.strip() and not re.match(r"\s+(at |\.\.\. \d+ more)", line)]


def cluster_id() -> str:
    """A random KRaft cluster id, as ``kafka-storage.sh random-uuid`` makes them (URL-safe
    base64 of 16 random bytes, never starting with '-'), without starting a JVM."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaBroker(LocalBroker):
    """One Apache Kafka node (KRaft) on loopback: by default a combined broker and
    controller, alone in its cluster; :class:`~riverbed.streams.kafka_cluster.KafkaCluster`
    makes several share one cluster id and quorum (``roles``, ``quorum_voters``).

    ``data_dir`` keeps the KRaft log dir somewhere of the caller's choosing (it is then
    never removed, and a formatted one is reused: a restart on the same log dir); by default
    it lives in the broker's own temporary work dir. ``work_dir`` given: the caller's too
    (never removed). ``settings`` add to or override the broker's ``server.properties``
    (:data:`TEST_SETTINGS` are the defaults); ``format_options`` go to ``kafka-storage
    format`` (e.g. ``["--add-scram", "SCRAM-SHA-256=[name=alice,password=...]"]``).
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1",
        controller_port: int | None = None, node_id: int = 1,
        data_dir: Path | None = None, settings: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS, libs: Path | None = None,
        roles: Sequence[str] = ("broker", "controller"), quorum_voters: str | None = None,
        cluster_id: str | None = None, work_dir: Path | None = None,
        format_options: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.controller_port = controller_port or free_port(host)
        while self.controller_port == self.port:
            self.controller_port = free_port(host)
        self.node_id = node_id
        self.data_dir = data_dir
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.jvm_options = list(jvm_options)
        self.libs = libs
        if not set(roles) <= {"broker", "controller"} or not roles:
            raise BrokerError(f"roles must be broker and/or controller, got {list(roles)}")
        self.roles = tuple(roles)
        #: ``id@host:port,...`` of the controllers (default: this node alone)
        self.quorum_voters = quorum_voters
        self.cluster_id: str | None = cluster_id
        self.format_options = list(format_options)
        self.process: subprocess.Popen[bytes] | None = None
        self.work_dir: Path | None = work_dir
        self._own_work_dir = work_dir is None
        self.log_path: Path | None = None
        #: seconds from launching the JVM to the first ApiVersions answer (last start)
        self.start_seconds: float | None = None
        self._launched = 0.0
        self._keep = False

    @property
    def logs_kept(self) -> bool:
        """Whether the last stop found something worth a look (the node died by itself,
        needed SIGKILL, or the caller asked to keep its logs)."""
        return self._keep

    @property
    def is_broker(self) -> bool:
        """Whether this node serves clients (its ``port``)."""
        return "broker" in self.roles

    def server_properties(self, log_dir: Path) -> dict[str, str]:
        """The node's ``server.properties``."""
        h, p, c, n = self.host, self.port, self.controller_port, self.node_id
        listeners = ([f"PLAINTEXT://{h}:{p}"] if self.is_broker else []) + (
            [f"CONTROLLER://{h}:{c}"] if "controller" in self.roles else [])
        properties = {
            "process.roles": ",".join(self.roles),
            "node.id": str(n),
            "controller.quorum.voters": self.quorum_voters or f"{n}@{h}:{c}",
            "listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(log_dir),
        }
        if self.is_broker:
            properties.update({"advertised.listeners": f"PLAINTEXT://{h}:{p}",
                               "inter.broker.listener.name": "PLAINTEXT"})
        return {**properties, **self.settings}

    def start(self, timeout_s: float = 60.0) -> KafkaBroker:
        """Format the log dir if new, start the node and wait until it answers a Kafka
        ``ApiVersions`` request (BrokerError, logs kept, otherwise)."""
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def prepare(self) -> list[str]:
        """Write ``server.properties`` and format the log dir if it is new; returns the
        JVM command prefix. Safe from any thread (a cluster formats its nodes at once)."""
        if self.process is not None:
            raise BrokerError("broker already started")
        reason = kafka_available(self.libs)
        if reason:
            raise BrokerError(f"Apache Kafka cannot run here: {reason}")
        ports = ([self.port] if self.is_broker else []) + (
            [self.controller_port] if "controller" in self.roles else [])
        for port in ports:
            if port_in_use(port, self.host):
                raise BrokerError(f"port {port} is in use on {self.host} (another broker?)")
        java = java_binary()
        assert java is not None
        libs = self.libs or kafka_libs_dir()
        if self.work_dir is None or not self.work_dir.exists():
            if self._own_work_dir:
                self.work_dir = Path(tempfile.mkdtemp(prefix="riverbed-kafka-"))
            else:
                assert self.work_dir is not None
                self.work_dir.mkdir(parents=True)
        self._keep = False
        log_dir = self.data_dir or self.work_dir / "data"
        config = self.work_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in
                                  self.server_properties(log_dir).items()))
        self.log_path = self.work_dir / "server.log"
        base = [java, *self.jvm_options, f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                f"-Dkafka.logs.dir={self.work_dir}", "-cp", f"{libs}/*"]
        try:
            if not (log_dir / "meta.properties").exists():
                self._format(base, config)
        except BaseException:
            self.stop(keep=True)
            raise
        return base

    def launch(self, base: list[str] | None = None) -> None:
        """Start the JVM (after :meth:`prepare`, which it runs unless given its result)
        without waiting for it to answer: a cluster launches every node first, none
        answers before a quorum is up. Call it from the thread that will stop the node:
        ``PR_SET_PDEATHSIG`` kills the JVM when the thread that started it ends."""
        base = base if base is not None else self.prepare()
        assert self.work_dir is not None and self.log_path is not None
        atexit.register(self.stop)
        try:
            self._launched = time.monotonic()
            with open(self.log_path, "ab") as log:
                try:
                    self.process = subprocess.Popen(
                        [*base, "kafka.Kafka", str(self.work_dir / "server.properties")],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        preexec_fn=die_with_parent,  # noqa: PLW1509 (prctl only, no locks)
                        start_new_session=True, cwd=self.work_dir,
                    )
                except OSError as exc:
                    raise BrokerError(f"cannot run {base[0]}: {exc}") from exc
        except BaseException:
            self.stop(keep=True)
            raise

    def _format(self, base: list[str], config: Path) -> None:
        self.cluster_id = self.cluster_id or cluster_id()
        command = [*base, "kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                   "-c", str(config), *self.format_options]
        assert self.log_path is not None
        try:
            with open(self.log_path, "ab") as log:
                done = subprocess.run(
                    command, check=False, stdout=log, stderr=subprocess.STDOUT, timeout=120,
                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, cwd=self.work_dir)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting the Kafka log dir took over 120s "
                              f"(log kept in {self.log_path})") from exc
        if done.returncode != 0:
            tail = " | ".join(self._log_tail(3).splitlines())
            raise BrokerError(f"formatting the Kafka log dir failed (exit {done.returncode}): "
                              f"{tail} (log kept in {self.log_path})")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the launched node answers ApiVersions: a broker on its client port
        (opened once registered and unfenced), a controller-only node on its controller
        port. BrokerError if it exits or stays silent past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        if self.process is None:
            raise BrokerError("broker not launched")
        address = self.bootstrap_servers if self.is_broker else (
            f"{self.host}:{self.controller_port}")
        while True:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"Kafka exited early with code {self.process.returncode} (log kept in "
                    f"{self.log_path}): {self._log_tail()}")
            with contextlib.suppress(BrokerError):
                probe_bootstrap(address, timeout_s=1.0)
                self.start_seconds = time.monotonic() - self._launched
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"Kafka did not answer within {timeout_s:g}s (log kept in "
                                  f"{self.log_path}): {self._log_tail(5)}")
            time.sleep(0.1)  # poll interval while the JVM starts

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(_without_stack_frames(self.log_path.read_text(errors="replace"))[-lines:])

    def stop(self, grace_s: float = 15.0, keep: bool = False,
             sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the node by PID (``sig``, SIGTERM by default: a controlled shutdown; SIGKILL
        after ``grace_s``) and wait for it to exit; safe to call twice. The work dir is
        removed unless ``keep``, unless the broker had died by itself or needed SIGKILL
        (then its path is printed to stderr); never when it is the caller's."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        self._keep = self._keep or keep
        if process is not None:
            if process.poll() is not None:
                self._keep = True  # it died on its own: that is worth a look
            else:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
                    if sig not in (signal.SIGKILL, signal.SIGSTOP):
                        process.send_signal(signal.SIGCONT)  # a frozen JVM handles it now
                try:
                    process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._keep = True
                    process.kill()
                    process.wait()
        if self.work_dir is None or not self.work_dir.exists():
            return
        if not self._own_work_dir:
            return  # the caller's (a cluster's): the caller decides
        if self._keep:
            print(f"riverbed: Kafka broker logs kept in {self.work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep=exc_type is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m riverbed.streams.kafka_broker fetch|check|run``: fetch the jars, say whether
    Kafka can run here, or run a broker until Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    what = args[0] if args else "check"
    try:
        if what == "fetch":
            print(fetch_kafka())
            return 0
        if what == "check":
            reason = kafka_available()
            print(reason or f"Apache Kafka {KAFKA_VERSION} can run here ({kafka_libs_dir()})")
            return 1 if reason else 0
        if what == "run":
            with KafkaBroker() as broker:
                print(f"Apache Kafka {KAFKA_VERSION} on {broker.bootstrap_servers} "
                      f"(pid {broker.pid}, up in {broker.start_seconds:.1f}s); Ctrl-C stops it",
                      flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while broker.process and broker.process.poll() is None:
                        time.sleep(0.5)
            return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m riverbed.streams.kafka_broker fetch|check|run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
