"""Secure-connection settings: validated together, the password never in clear in the TOML
by default, never printed; the TLS context and the clients' options built from them."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from riverbed.streams.config import BrokerSettings, load_settings, settings_from_dict
from riverbed.streams.errors import ConfigError
from riverbed.streams.kafka_clients import client_options
from riverbed.streams.security import librdkafka_security, sasl_password, ssl_context

MODEL = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}]}
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "app"}
SECRET = "s3cret-d0-not-print"


def _settings(broker: dict[str, Any], env: dict[str, str] | None = None,
              base_dir: Path = Path(".")) -> BrokerSettings:
    return settings_from_dict({"broker": broker, "models": [MODEL]}, env=env or {},
                              base_dir=base_dir).broker


def test_plaintext_is_the_default_and_builds_no_tls_or_sasl() -> None:
    broker = _settings({})
    assert broker.security_protocol == "PLAINTEXT"
    assert client_options(broker) == {"bootstrap_servers": "127.0.0.1:9092",
                                      "security_protocol": "PLAINTEXT"}


def test_the_password_comes_from_the_environment_and_is_never_printed() -> None:
    broker = _settings(SASL, env={"RIVERBED_BROKER__SASL_PASSWORD": SECRET})
    assert sasl_password(broker) == SECRET
    assert SECRET not in repr(broker)
    settings = settings_from_dict({"broker": SASL, "models": [MODEL]},
                                  env={"RIVERBED_BROKER__SASL_PASSWORD": SECRET})
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    options = client_options(broker)
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_a_password_in_clear_in_the_toml_is_refused_unless_allowed(tmp_path: Path) -> None:
    config = tmp_path / "riverbed.toml"
    config.write_text('[broker]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
                      f'sasl_username = "app"\nsasl_password = "{SECRET}"\n\n'
                      '[[models]]\nname = "m"\npipeline = [{ "linear_model.LogisticRegression"'
                      ' = {} }]\n')
    with pytest.raises(ConfigError, match="RIVERBED_BROKER__SASL_PASSWORD") as refused:
        load_settings(config, env={})
    assert refused.value.field == "broker.sasl_password"
    assert SECRET not in str(refused.value)
    config.write_text(config.read_text().replace(
        "[broker]\n", "[broker]\nallow_password_in_config = true\n"))
    assert sasl_password(load_settings(config, env={}).broker) == SECRET


def test_the_password_file_is_relative_to_the_config_and_read_when_a_client_is_built(
        tmp_path: Path) -> None:
    broker = _settings({**SASL, "sasl_password_file": "secrets/pw"}, base_dir=tmp_path)
    assert broker.sasl_password_file == str(tmp_path / "secrets" / "pw")
    with pytest.raises(ConfigError, match="cannot read") as missing:
        client_options(broker)
    assert missing.value.field == "broker.sasl_password_file"
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text(SECRET + "\n")
    assert sasl_password(broker) == SECRET
    (tmp_path / "secrets" / "pw").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        sasl_password(broker)


@pytest.mark.parametrize(("broker", "field"), [
    ({"security_protocol": "SASL_SSL"}, "broker.sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "broker.sasl_username"),
    (SASL, "broker.sasl_password"),
    ({**SASL, "sasl_password_file": "pw", "allow_password_in_config": True,
      "sasl_password": "x"}, "broker.sasl_password_file"),
    ({"sasl_username": "app"}, "broker.sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
      "sasl_password_file": "pw", "ssl_cafile": "ca.pem"}, "broker.ssl_cafile"),
    ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "broker.ssl_keyfile"),
    ({"security_protocol": "TLS"}, "broker.security_protocol"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "broker.sasl_mechanism"),
])
def test_settings_that_do_not_fit_name_the_field(broker: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as bad:
        _settings(broker)
    assert bad.value.field == field


def test_tls_files_are_checked_when_a_client_is_built(tmp_path: Path) -> None:
    broker = _settings({"security_protocol": "SSL", "ssl_cafile": "ca.pem",
                        "ssl_check_hostname": False}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as missing:
        ssl_context(broker)
    assert missing.value.field == "broker.ssl_cafile"
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM CA file"):
        ssl_context(broker)


def test_librdkafka_gets_the_same_settings(tmp_path: Path) -> None:
    broker = _settings({**SASL, "ssl_cafile": "/etc/ca.pem", "ssl_check_hostname": False},
                       env={"RIVERBED_BROKER__SASL_PASSWORD": SECRET})
    assert librdkafka_security(broker) == {
        "security.protocol": "sasl_ssl", "ssl.ca.location": "/etc/ca.pem",
        "ssl.endpoint.identification.algorithm": "none", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app", "sasl.password": SECRET}


def test_the_readme_managed_kafka_example_is_a_valid_config() -> None:
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    managed = [b for b in blocks if "SASL_SSL" in b]
    assert len(managed) == 1
    raw = {**tomllib.loads(managed[0]), "models": [MODEL]}
    broker = settings_from_dict(raw, env={"RIVERBED_BROKER__SASL_PASSWORD": SECRET}).broker
    assert (broker.security_protocol, broker.sasl_mechanism) == ("SASL_SSL", "PLAIN")
    assert sasl_password(broker) == SECRET and ssl_context(broker) is not None
    with pytest.raises(ConfigError, match="RIVERBED_BROKER__SASL_PASSWORD"):
        settings_from_dict(raw, env={})  # no password anywhere: refused, naming the way
