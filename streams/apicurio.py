"""A real Confluent-API schema registry for tests: Apicurio Registry 2.4.2, in memory, run
from the Quarkus build that ``deploy/registry/pom.xml`` describes (Maven Central only).

Java 17+ and the build are needed (:func:`apicurio_available` says what is missing);
:func:`build_apicurio` (or ``python -m riverbed.streams.apicurio fetch``) runs the one Maven
command once, into :func:`apicurio_dir`; offline afterwards.

:class:`ApicurioRegistry` starts one registry on a free loopback port, returns once
``GET /apis/ccompat/v7/subjects`` answers 200, and is stopped by PID (SIGTERM, then SIGKILL
after a grace period) by :meth:`~ApicurioRegistry.stop`, the context manager, ``atexit``,
and the kernel should this process die. :meth:`~ApicurioRegistry.pause` and
:meth:`~ApicurioRegistry.resume` (SIGSTOP/SIGCONT) make an outage in which connections are
accepted by the kernel but never answered. Its storage is memory: a restart forgets every
schema. The log is kept, with its path in the error, when it failed to start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from riverbed.streams.broker import die_with_parent, free_port
from riverbed.streams.errors import SchemaRegistryError
from riverbed.streams.kafka_broker import _java_major, java_binary

#: the same as ``apicurio.version`` (without ``.Final``) in deploy/registry/pom.xml
APICURIO_VERSION = "2.4.2"
POM = Path(__file__).resolve().parent.parent / "deploy" / "registry" / "pom.xml"
#: where Apicurio serves the Confluent API
CCOMPAT = "/apis/ccompat/v7"
JVM_OPTIONS = ("-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:-UsePerfData",
               "-XX:TieredStopAtLevel=1", "-XX:+ExitOnOutOfMemoryError")


def apicurio_dir() -> Path:
    """The build dir: ``$RIVERBED_APICURIO_DIR`` if set, else
    ``${XDG_CACHE_HOME:-~/.cache}/riverbed/apicurio-<version>``."""
    override = os.environ.get("RIVERBED_APICURIO_DIR")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "riverbed" / f"apicurio-{APICURIO_VERSION}"


def build_command(build_dir: Path | None = None) -> list[str]:
    """The one Maven command that fetches and builds the registry into ``build_dir``."""
    return ["mvn", "-q", "-B", "--no-transfer-progress", "-f", str(POM), "package",
            f"-Dregistry.build.dir={build_dir or apicurio_dir()}"]


def _runner(build_dir: Path | None = None) -> Path:
    return (build_dir or apicurio_dir()) / "quarkus-app" / "quarkus-run.jar"


def apicurio_available() -> str | None:
    """None if Java 17+ and the build are present; else the reason, in one line."""
    java = java_binary()
    if java is None:
        return "java not found (Apicurio Registry needs Java 17+ on PATH or in JAVA_HOME)"
    major = _java_major(java)
    if major is None or major < 17:
        return f"{java} is not Java 17+"
    if not _runner().is_file():
        return f"Apicurio Registry not built: run {shlex.join(build_command())}"
    return None


def build_apicurio(timeout_s: float = 1200.0) -> Path:
    """Fetch and build the registry with Maven; returns the runnable jar."""
    try:
        subprocess.run(build_command(), check=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _failed(f"building Apicurio Registry failed: {exc}") from exc
    return _runner()


def _failed(message: str) -> SchemaRegistryError:
    return SchemaRegistryError(message, retriable=False)


class ApicurioRegistry:
    """One in-memory Apicurio Registry on loopback (module docstring)."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.start_seconds = 0.0

    @property
    def url(self) -> str:
        """The Confluent-API root (``registry.url``)."""
        return f"http://{self.host}:{self.port}{CCOMPAT}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 90.0) -> Self:
        """Start it and return once it answers; SchemaRegistryError (log kept) otherwise."""
        reason = apicurio_available()
        if reason is not None:
            raise _failed(reason)
        java = java_binary()
        assert java is not None
        handle, name = tempfile.mkstemp(prefix="riverbed-apicurio-", suffix=".log")
        self.log_path = Path(name)
        started = time.monotonic()
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(
                [java, *JVM_OPTIONS, f"-Dquarkus.http.host={self.host}",
                 f"-Dquarkus.http.port={self.port}", "-jar", str(_runner())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout_s)
        except SchemaRegistryError:
            self.stop(keep_log=True)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise _failed(f"Apicurio Registry exited with {self.process.returncode} "
                                  f"(log: {self.log_path})")
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(
                    f"{self.url}/subjects", timeout=2) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.2)  # polling a child process's port: nothing to wait on instead
        raise _failed(f"Apicurio Registry did not answer within {timeout_s:.0f}s "
                          f"(log: {self.log_path})")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, never answered."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self, grace_s: float = 15.0, keep_log: bool = False) -> None:
        """Stop it by PID (SIGTERM, SIGKILL after ``grace_s``); safe to call twice."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a paused JVM cannot handle SIGTERM
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.log_path is not None and self.log_path.exists():
            if keep_log:
                print(f"riverbed: Apicurio Registry log kept in {self.log_path}",
                      file=sys.stderr)
            else:
                self.log_path.unlink()

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(keep_log=exc_type is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m riverbed.streams.apicurio fetch|check|run``."""
    args = list(sys.argv[1:] if argv is None else argv)
    what = args[0] if args else "check"
    try:
        if what == "fetch":
            print(build_apicurio())
            return 0
        if what == "check":
            reason = apicurio_available()
            print(reason or f"Apicurio Registry {APICURIO_VERSION} can run here")
            return 1 if reason else 0
        if what == "run":
            with ApicurioRegistry() as registry:
                print(f"Apicurio Registry at {registry.url} (pid {registry.pid}, up in "
                      f"{registry.start_seconds:.1f}s); Ctrl-C stops it", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while registry.process and registry.process.poll() is None:
                        time.sleep(0.5)
            return 0
    except SchemaRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m riverbed.streams.apicurio fetch|check|run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
