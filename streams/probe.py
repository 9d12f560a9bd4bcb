"""Is the broker there, and does it accept us? One connection made exactly as riverbed's
clients make theirs (:func:`~riverbed.streams.kafka_clients.client_options`: TLS handshake,
SASL authentication), then one Metadata request: the request a client sends first, and one
a SASL listener refuses before authentication.

Commands run it before they build any client, the worker's broker watch every second: a
wrong password, an untrusted CA or a plaintext client on a TLS port becomes ONE line
(:class:`~riverbed.streams.errors.BrokerSecurityError`), not a client retrying in a loop.
The password never appears in a message.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from riverbed.streams.broker import split_bootstrap
from riverbed.streams.config import BrokerSettings
from riverbed.streams.errors import BrokerError, BrokerSecurityError
from riverbed.streams.kafka_clients import client_options


async def probe(broker: BrokerSettings, timeout_s: float = 3.0) -> None:
    """Return once one bootstrap server answered a Metadata request over a connection set
    up as configured; else raise BrokerSecurityError (the broker refused our security
    settings: retrying cannot help) or BrokerError (nobody answered), in one line."""
    options = client_options(broker)
    options.pop("bootstrap_servers")
    problems: list[str] = []
    refusals: list[str] = []
    for host, port in split_bootstrap(broker.bootstrap_servers):
        where = f"{host}:{port}"
        try:
            await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            problems.append(f"{where} (cannot resolve host {host!r})")
            continue
        try:
            async with asyncio.timeout(timeout_s):
                await _metadata(host, port, timeout_s, options)
            return
        except ssl.SSLCertVerificationError as exc:
            refusals.append(_untrusted(broker, where, exc))
        except ssl.SSLError as exc:
            refusals.append(f"TLS handshake with {where} failed ({exc.reason or exc}): is it "
                            "a TLS listener? (broker.security_protocol "
                            f"{broker.security_protocol})")
        except kafka_errors.SaslAuthenticationFailed:
            refusals.append(f"SASL authentication as {broker.sasl_username!r} "
                            f"({broker.sasl_mechanism}) refused by {where}: wrong username or "
                            "password, or no such user for this mechanism")
        except (kafka_errors.UnsupportedSaslMechanismError,
                kafka_errors.IllegalSaslStateError) as exc:
            refusals.append(f"{where} refused SASL {broker.sasl_mechanism}: {exc}")
        except (kafka_errors.KafkaConnectionError, ConnectionResetError,
                asyncio.IncompleteReadError):
            problems.append(f"{where} (closed the connection without a Kafka answer"
                            f"{_mismatch_hint(broker)})")
        except (TimeoutError, kafka_errors.RequestTimedOutError):
            problems.append(f"{where} (no Kafka answer within {timeout_s:g}s"
                            f"{_mismatch_hint(broker)})")
        except OSError as exc:
            problems.append(f"{where} ({(exc.strerror or str(exc)).lower()})")
        except kafka_errors.KafkaError as exc:
            problems.append(f"{where} ({exc})")
    if refusals:
        raise BrokerSecurityError("broker refused the connection: " + "; ".join(refusals))
    raise BrokerError("no broker reachable: " + ", ".join(problems))


def probe_now(broker: BrokerSettings, timeout_s: float = 3.0) -> None:
    """:func:`probe` for callers without an event loop (the command line)."""
    asyncio.run(probe(broker, timeout_s))


async def _metadata(host: str, port: int, timeout_s: float, options: dict[str, object]) -> None:
    conn = await create_conn(host, port, client_id="riverbed-probe",
                             request_timeout_ms=int(timeout_s * 1000), **options)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def _untrusted(broker: BrokerSettings, where: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = exc.verify_message or exc.reason or str(exc)
    if broker.ssl_cafile is None:
        trust = "the system's CAs (set broker.ssl_cafile to the CA that signed it)"
    else:
        trust = f"broker.ssl_cafile {broker.ssl_cafile}"
    if "hostname" in str(reason).lower() or "IP address mismatch" in str(reason):
        trust += "; broker.ssl_check_hostname is on"
    return f"TLS: the certificate of {where} is not trusted ({reason}) by {trust}"


def _mismatch_hint(broker: BrokerSettings) -> str:
    """A listener that closes on a Kafka request usually speaks another protocol, or (TLS)
    wants a client certificate this client did not present."""
    protocol = f"broker.security_protocol is {broker.security_protocol}"
    certificate = (", or a client certificate required (broker.ssl_certfile)"
                   if broker.uses_tls and broker.ssl_certfile is None else "")
    if broker.security_protocol == "PLAINTEXT":
        return f"; a TLS or SASL listener? {protocol}"
    if broker.security_protocol == "SSL":
        return f"; a SASL listener{certificate}? {protocol}"
    if broker.security_protocol == "SASL_PLAINTEXT":
        return f"; a TLS listener? {protocol}"
    return f"; a plaintext listener{certificate}? {protocol}"
