"""An Apache Kafka node with a SASL_SSL listener for the security tests: a CA and a broker
certificate made with ``openssl`` for the test, SCRAM users added when the log dir is
formatted (``kafka-storage format --add-scram``), a PLAIN user in the listener's JAAS
config. The node keeps its PLAINTEXT listener for the inter-broker link and its readiness
probe; clients under test use :attr:`SecureKafka.sasl_ssl`, or :attr:`SecureKafka.mtls` (SSL
with client certificates required)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from riverbed.streams.broker import free_port
from riverbed.streams.kafka_broker import KafkaBroker

USER = "riverbed-app"
PLAIN_USER = "riverbed-plain"


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, another CA nobody trusts, the broker's keystore (key + chain),
    a client certificate and key the CA signed (mutual TLS)."""

    ca: Path
    other_ca: Path
    broker_keystore: Path
    client_cert: Path
    client_key: Path


def openssl_missing() -> str | None:
    """Why certificates cannot be made here, or None."""
    return None if shutil.which("openssl") else "openssl not found (it makes the test CA)"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return key, cert


def make_pki(directory: Path) -> Pki:
    """A test CA signing a broker certificate for 127.0.0.1 and localhost, and a second,
    unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca(directory, "riverbed-test-ca")
    _, other = _ca(directory, "untrusted-ca")
    (directory / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
             "-out", "broker.csr", "-subj", "/CN=localhost", cwd=directory)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", "broker.pem", "-days", "2",
             "-extfile", "san.cnf", cwd=directory)
    keystore = directory / "broker-keystore.pem"  # Kafka's PEM keystore: key, then chain
    keystore.write_text((directory / "broker.key").read_text()
                        + (directory / "broker.pem").read_text() + ca.read_text())
    (directory / "client.cnf").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key",
             "-out", "client.csr", "-subj", "/CN=riverbed-client", cwd=directory)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", "client.pem", "-days", "2",
             "-extfile", "client.cnf", cwd=directory)
    return Pki(ca=ca, other_ca=other, broker_keystore=keystore,
               client_cert=directory / "client.pem", client_key=directory / "client.key")


class SecureKafka:
    """A single Kafka node with a SASL_SSL listener; the SCRAM and PLAIN passwords are
    random per run (so a leak is unambiguous in any log)."""

    def __init__(self, pki: Pki, work: Path) -> None:
        self.pki = pki
        self.password = "rb" + secrets.token_hex(16)
        self.plain_password = "rp" + secrets.token_hex(16)
        host = "127.0.0.1"
        self.sasl_port = free_port(host)
        self.mtls_port = free_port(host)
        port, controller = free_port(host), free_port(host)
        jaas = "org.apache.kafka.common.security"
        settings = {
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller},"
                         f"SASL_SSL://{host}:{self.sasl_port},SSL://{host}:{self.mtls_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port},"
                                    f"SASL_SSL://{host}:{self.sasl_port},"
                                    f"SSL://{host}:{self.mtls_port}",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            # mutual TLS: the client must present a certificate the CA signed
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.ssl.ssl.keystore.type": "PEM",
            "listener.name.ssl.ssl.keystore.location": str(pki.broker_keystore),
            "listener.name.ssl.ssl.truststore.type": "PEM",
            "listener.name.ssl.ssl.truststore.location": str(pki.ca),
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config":
                f"{jaas}.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                f"{jaas}.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                f'{jaas}.plain.PlainLoginModule required user_{PLAIN_USER}='
                f'"{self.plain_password}";',
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(pki.broker_keystore),
        }
        self.broker = KafkaBroker(
            port=port, controller_port=controller, settings=settings,
            data_dir=work / "kraft", work_dir=work / "node",
            format_options=[
                "--add-scram", f"SCRAM-SHA-256=[name={USER},password={self.password}]",
                "--add-scram", f"SCRAM-SHA-512=[name={USER},password={self.password}]"])

    @property
    def sasl_ssl(self) -> str:
        """The SASL_SSL listener's ``host:port``."""
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def mtls(self) -> str:
        """The SSL listener's ``host:port`` (client certificates required)."""
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def log_text(self) -> str:
        """The broker's server.log so far."""
        assert self.broker.log_path is not None
        return self.broker.log_path.read_text(errors="replace")
