"""riverbed over SASL_SSL, against Apache Kafka 4 with a TLS listener whose certificate a
test CA signed and a SCRAM user created when the broker's log dir was formatted.

* Right credentials: a ``riverbed worker`` child (PLAIN, its password in a file the TOML
  config names) predicts every event produced over SASL_SSL (SCRAM-SHA-256), and
  ``riverbed tail`` reads them (SCRAM-SHA-512, the password in the environment).
* A wrong password, an untrusted CA, a plaintext client on the TLS port: ``riverbed
  worker`` and ``riverbed tail`` each print ONE line and exit 1 (no retry storm).
* The password appears in no output of riverbed (the worker runs at DEBUG) and not in the
  broker's ``server.log``.

Without Java, the jars or openssl these tests skip with the reason -- except under
``CI=true``, where they fail."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from riverbed.streams.broker import die_with_parent, free_port
from riverbed.streams.config import BrokerSettings, Settings
from riverbed.streams.produce import produce
from riverbed.streams.tail import collect
from tests.conftest import CONFIG, ROOT, unique_settings
from tests.helpers import provision, worker_env
from tests.integration._secure_kafka import (
    PLAIN_USER,
    USER,
    SecureKafka,
    make_pki,
    openssl_missing,
)
from tests.integration.test_kafka_broker import require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.own_broker, pytest.mark.slow, pytest.mark.heavy]
EVENTS = 3000


@pytest.fixture(scope="module")
def kafka() -> Iterator[SecureKafka]:
    """One SASL_SSL broker for the module, stopped by PID at its end."""
    require_kafka()
    missing = openssl_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    work = Path(tempfile.mkdtemp(prefix="riverbed-sasl-ssl-"))
    secure = SecureKafka(make_pki(work / "pki"), work)
    secure.broker.start()
    failed = True
    try:
        yield secure
        failed = False
    finally:
        secure.broker.stop(keep=failed)
        if not failed:
            shutil.rmtree(work, ignore_errors=True)


def _secure(kafka: SecureKafka, **changes: object) -> BrokerSettings:
    good = BrokerSettings(bootstrap_servers=kafka.sasl_ssl, security_protocol="SASL_SSL",
                          sasl_mechanism="SCRAM-SHA-256", sasl_username=USER,
                          sasl_password=kafka.password, ssl_cafile=str(kafka.pki.ca))
    return dataclasses.replace(good, **changes)  # type: ignore[arg-type]


def _env(settings: Settings) -> dict[str, str]:
    """A child's environment: the topics of ``settings``, its broker's security settings,
    the password in RIVERBED_BROKER__SASL_PASSWORD (never on a command line)."""
    b = settings.broker
    env = worker_env(settings, os.urandom(32).hex())
    env["RIVERBED_BROKER__SECURITY_PROTOCOL"] = b.security_protocol
    for name in ("sasl_mechanism", "sasl_username", "sasl_password", "ssl_cafile"):
        value = getattr(b, name)
        if value is not None:
            env[f"RIVERBED_BROKER__{name.upper()}"] = value
    return env


def _riverbed(args: list[str], env: dict[str, str], timeout_s: float = 60
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "riverbed.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s,
                          preexec_fn=die_with_parent)


def _secure_config(kafka: SecureKafka, directory: Path) -> Path:
    """The example config with a [broker] table for PLAIN over SASL_SSL, the password in a
    file next to it (a mounted secret), named by a relative path."""
    secret = directory / "secrets" / "kafka-password"
    secret.parent.mkdir()
    secret.write_text(kafka.plain_password + "\n")
    config = directory / "riverbed.toml"
    config.write_text(CONFIG.read_text().replace(
        '[broker]\nbootstrap_servers = "127.0.0.1:9092"\n',
        f'[broker]\nbootstrap_servers = "{kafka.sasl_ssl}"\nsecurity_protocol = "SASL_SSL"\n'
        f'sasl_mechanism = "PLAIN"\nsasl_username = "{PLAIN_USER}"\n'
        f'sasl_password_file = "secrets/kafka-password"\nssl_cafile = "{kafka.pki.ca}"\n'))
    return config


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_worker_predicts_every_event_over_sasl_ssl(
        kafka: SecureKafka, example_settings: Settings, tmp_path: Path, guarantee: str) -> None:
    """The worker (PLAIN, password file, at DEBUG: aiokafka logs every request there, the
    PLAIN authentication bytes included unless riverbed caps its connection logger) and
    the test's own clients (SCRAM-SHA-256) and `riverbed tail` (SCRAM-SHA-512, password
    from the environment) all over SASL_SSL; with exactly-once, the worker's transactional
    producer too."""
    settings = unique_settings(example_settings, kafka.sasl_ssl)
    settings = dataclasses.replace(settings, broker=_secure(kafka))
    await provision(settings)  # the admin client over SASL_SSL
    config = _secure_config(kafka, tmp_path)
    env = {k: v for k, v in worker_env(settings, os.urandom(32).hex()).items()
           if not k.startswith("RIVERBED_BROKER__")}  # the broker: from the TOML file
    env["RIVERBED_WORKER__PROCESSING_GUARANTEE"] = guarantee  # transactions over SASL_SSL too
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "worker", "-c", str(config),
             "--web-port", str(free_port()), "--log-level", "debug"],
            env={**env, "TMPDIR": str(tmp_path)}, cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        report = await produce(settings, "agrawal", EVENTS, seed=11)
        assert report.sent == EVENTS
        predictions = await collect(settings, settings.topics.predictions,
                                    settings.topics.partitions, EVENTS, timeout_s=120)
        assert worker.poll() is None, log.read_text()[-3000:]
        assert len({p.value for p in predictions}) == EVENTS
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    assert code == 0, log.read_text()[-3000:]

    scram512 = dataclasses.replace(settings, broker=_secure(
        kafka, sasl_mechanism="SCRAM-SHA-512"))
    tail = _riverbed(["tail", settings.topics.predictions, "--max", "5",
                      "--idle-timeout", "20"], _env(scram512))
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 5 and '"model": "agrawal-lr"' in tail.stdout

    text = log.read_text(errors="replace")
    assert f"Authenticated as {PLAIN_USER} via PLAIN" in text  # the log is real
    assert "DEBUG" in text
    for output in (text, tail.stdout + tail.stderr, kafka.log_text):
        assert kafka.password not in output
        assert kafka.plain_password not in output


# (id, broker settings changes, text of the one line)
FAILURES = [
    ("wrong-password", {"sasl_password": "wrong-" + os.urandom(8).hex()},
     "SASL authentication as 'riverbed-app' (SCRAM-SHA-256) refused"),
    ("untrusted-ca", {"ssl_cafile": "OTHER_CA"}, "is not trusted (self-signed certificate"),
    ("plaintext-client", {"security_protocol": "PLAINTEXT", "sasl_mechanism": None,
                          "sasl_username": None, "sasl_password": None, "ssl_cafile": None},
     "closed the connection without a Kafka answer; a TLS or SASL listener? "
     "broker.security_protocol is PLAINTEXT"),
]


@pytest.mark.parametrize("command", ["worker", "tail"])
@pytest.mark.parametrize(("case", "changes", "line"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_refused_connection_is_one_line_and_exit_1(
        kafka: SecureKafka, example_settings: Settings, command: str, case: str,
        changes: dict[str, object], line: str) -> None:
    changes = {k: str(kafka.pki.other_ca) if v == "OTHER_CA" else v for k, v in changes.items()}
    settings = unique_settings(example_settings, kafka.sasl_ssl)
    settings = dataclasses.replace(settings, broker=_secure(kafka, **changes))
    before = len(kafka.log_text)
    args = ["worker", "--log-level", "info"] if command == "worker" else [
        "tail", settings.topics.predictions, "--idle-timeout", "5"]
    done = _riverbed(args, _env(settings))
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line: no traceback, no client retrying
    assert lines[0].startswith("error: ") and line in lines[0], lines[0]
    assert kafka.password not in done.stderr
    if settings.broker.sasl_password:
        assert settings.broker.sasl_password not in done.stderr
        assert settings.broker.sasl_password not in kafka.log_text[before:]


async def test_mutual_tls(kafka: SecureKafka, example_settings: Settings) -> None:
    """SSL with a client certificate the broker requires: provisioning, producing and
    reading work with it; without it, the probe says what may be missing."""
    from riverbed.streams.errors import BrokerError
    from riverbed.streams.probe import probe

    broker = BrokerSettings(bootstrap_servers=kafka.mtls, security_protocol="SSL",
                            ssl_cafile=str(kafka.pki.ca), ssl_certfile=str(kafka.pki.client_cert),
                            ssl_keyfile=str(kafka.pki.client_key))
    settings = dataclasses.replace(unique_settings(example_settings, kafka.mtls), broker=broker)
    await probe(broker, 5.0)
    await provision(settings)
    await produce(settings, "agrawal", 50, seed=3)
    events = await collect(settings, settings.topics.events, settings.topics.partitions, 50,
                           timeout_s=60)
    assert len(events) == 50
    anonymous = dataclasses.replace(broker, ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(BrokerError, match=r"a client certificate required \(broker.ssl_certfile"):
        await probe(anonymous, 5.0)


async def test_the_broker_watch_connects_as_the_clients_do(kafka: SecureKafka) -> None:
    """The probe every CLI command and the worker's broker watch run: TLS and SASL, so a
    secure broker is "up" (a plaintext ApiVersions to a TLS port would call it down)."""
    from riverbed.streams.errors import BrokerError, BrokerSecurityError
    from riverbed.streams.probe import probe

    await probe(_secure(kafka), 5.0)
    await probe(_secure(kafka, sasl_mechanism="SCRAM-SHA-512"), 5.0)
    await probe(_secure(kafka, ssl_check_hostname=False), 5.0)
    with pytest.raises(BrokerSecurityError, match="not trusted"):
        await probe(_secure(kafka, bootstrap_servers=f"localhost:{kafka.sasl_port}",
                            ssl_cafile=str(kafka.pki.other_ca)), 5.0)
    with pytest.raises(BrokerError, match="a plaintext listener"):
        await probe(_secure(kafka, bootstrap_servers=kafka.broker.bootstrap_servers), 5.0)


async def test_the_broker_watch_stops_at_once_on_a_refusal(kafka: SecureKafka,
                                                            example_settings: Settings) -> None:
    """A worker whose credentials stop working (rotated, revoked) stops with one line at
    the watch's next probe instead of calling the broker "away" for
    ``broker.reconnect_timeout_s`` (60 s by default)."""
    import asyncio

    from riverbed.agents.runtime import ClientLogLimiter
    from riverbed.agents.supervision import BrokerWatch
    from riverbed.streams.errors import BrokerSecurityError
    from riverbed.streams.telemetry import WorkerStats

    settings = dataclasses.replace(example_settings, broker=_secure(
        kafka, sasl_password="rotated-" + os.urandom(6).hex()))
    stats = WorkerStats()
    watch = BrokerWatch(settings, stats, ClientLogLimiter(), lambda: True)
    with pytest.raises(BrokerSecurityError, match="SASL authentication"):
        await asyncio.wait_for(watch.run(), 15)
    assert settings.broker.reconnect_timeout_s >= 60
