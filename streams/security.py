"""What a Kafka client needs to connect securely, read from :class:`BrokerSettings`: the TLS
context (CA file, client certificate for mutual TLS, hostname checking) and the SASL
password (from the environment, via the settings, or from ``sasl_password_file``).

Files are read here, when a client is built, not when the config is loaded: a missing or
unreadable file is a :class:`~riverbed.streams.errors.ConfigError` naming the setting.
Nothing in this module logs; the password is never part of an error message.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Any

from riverbed.streams.config import BrokerSettings
from riverbed.streams.errors import ConfigError


@functools.lru_cache(maxsize=8)
def ssl_context(broker: BrokerSettings) -> ssl.SSLContext | None:
    """The client TLS context (None without TLS), built once per settings object: the
    system's CAs or ``ssl_cafile``, TLS 1.2+, the client certificate when configured."""
    if not broker.uses_tls:
        return None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        _readable(broker, name)
    try:
        context = ssl.create_default_context(cafile=broker.ssl_cafile)
    except ssl.SSLError as exc:
        raise ConfigError("broker.ssl_cafile", f"not a PEM CA file: {exc.reason or exc}"
                          ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = broker.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if broker.ssl_certfile is not None:
        try:
            context.load_cert_chain(broker.ssl_certfile, broker.ssl_keyfile)
        except ssl.SSLError as exc:
            raise ConfigError("broker.ssl_certfile", "cannot load the client certificate and "
                              f"key: {exc.reason or exc}") from None
    return context


def sasl_password(broker: BrokerSettings) -> str | None:
    """The SASL password (None without SASL): the setting (from the environment), else the
    first line of ``sasl_password_file``."""
    if not broker.uses_sasl:
        return None
    if broker.sasl_password is not None:
        return broker.sasl_password
    path = _readable(broker, "sasl_password_file")
    assert path is not None  # config validation: one of the two is set
    password = path.read_text().rstrip("\r\n")
    if not password:
        raise ConfigError("broker.sasl_password_file", f"{path} is empty")
    return password


def aiokafka_security(broker: BrokerSettings) -> dict[str, Any]:
    """aiokafka's connection keywords for ``broker``'s security settings."""
    options: dict[str, Any] = {"security_protocol": broker.security_protocol}
    if broker.uses_tls:
        options["ssl_context"] = ssl_context(broker)
    if broker.uses_sasl:
        options.update(sasl_mechanism=broker.sasl_mechanism,
                       sasl_plain_username=broker.sasl_username,
                       sasl_plain_password=sasl_password(broker))
    return options


def librdkafka_security(broker: BrokerSettings) -> dict[str, str]:
    """The same settings as librdkafka properties (confluent-kafka, quixstreams)."""
    options = {"security.protocol": broker.security_protocol.lower()}
    if broker.uses_tls:
        files = {"ssl.ca.location": broker.ssl_cafile,
                 "ssl.certificate.location": broker.ssl_certfile,
                 "ssl.key.location": broker.ssl_keyfile}
        options.update({k: v for k, v in files.items() if v is not None})
        options["ssl.endpoint.identification.algorithm"] = (
            "https" if broker.ssl_check_hostname else "none")
    if broker.uses_sasl:
        assert broker.sasl_mechanism is not None and broker.sasl_username is not None
        options.update({"sasl.mechanism": broker.sasl_mechanism,
                        "sasl.username": broker.sasl_username,
                        "sasl.password": sasl_password(broker) or ""})
    return options


def _readable(broker: BrokerSettings, name: str) -> Path | None:
    value = getattr(broker, name)
    if value is None:
        return None
    path = Path(value)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"broker.{name}", f"cannot read {path}: {exc.strerror or exc}"
                          ) from None
    return path
