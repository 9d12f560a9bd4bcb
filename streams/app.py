"""The Faust application object of a riverbed worker, configured from :class:`Settings`.

Faust supervises the worker: the lifecycle of its services (the batch ingest, the
producer), its tasks and timers, a crash stopping the process, and its web server (bound
to ``worker.web_host``, 127.0.0.1 by default -- Faust's own default is 0.0.0.0) with the
``/metrics`` + ``/riverbed/stats`` pages. The hot path is not a Faust agent: plain aiokafka
batches (``streams/ingest.py``) cost a tenth of Faust's per-event stream path here. So
Faust's own Kafka consumer, consumer group and producer are not started (nothing would
use them); downstream Faust apps get riverbed's records from ``streams/faust_records.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy

from riverbed.streams.config import BrokerSettings, Settings
from riverbed.streams.security import sasl_password, ssl_context
from riverbed.streams.telemetry import WorkerStats, exposition


def faust_broker_url(bootstrap_servers: str) -> str:
    """``h1:9092,h2:9092`` -> Faust's ``kafka://h1:9092;kafka://h2:9092``."""
    return ";".join(f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip())


def faust_credentials(broker: BrokerSettings) -> Any:
    """``broker``'s TLS and SASL settings as Faust ``broker_credentials`` (None: plaintext),
    for Faust apps that do connect to Kafka (downstream apps, the bench's naive agent)."""
    if broker.uses_sasl:
        return faust.SASLCredentials(
            username=broker.sasl_username, password=sasl_password(broker),
            ssl_context=ssl_context(broker), mechanism=broker.sasl_mechanism)
    if broker.uses_tls:
        return faust.SSLCredentials(ssl_context(broker))
    return None


def make_faust_app(settings: Settings, stats: WorkerStats, datadir: Path,
                   web_port: int | None = None, extra_metrics: list[Any] | None = None) -> Any:
    """A Faust app for one worker process; serves stats at /metrics and /riverbed/stats.

    riverbed keeps no Faust tables, but Faust creates ``<datadir>/v1/tables`` at start
    (by default ``./<app id>-data`` in the working directory): the worker passes a private
    temporary directory that it removes when it stops.
    """
    w = settings.worker
    app = faust.App(
        f"{w.group_id}.app",
        broker=faust_broker_url(settings.broker.bootstrap_servers),
        # never used to connect (no Faust consumer or producer, below), kept consistent
        broker_credentials=faust_credentials(settings.broker),
        autodiscover=False,
        store="memory://",
        topic_partitions=1,
        web_enabled=True,
        web_bind=w.web_host,
        web_host=w.web_host,
        web_port=w.web_port if web_port is None else web_port,
        broker_session_timeout=w.session_timeout_ms / 1000,
        broker_heartbeat_interval=w.heartbeat_interval_ms / 1000,
        producer_acks=-1,
        table_standby_replicas=0,
        datadir=datadir,
    )

    # no Faust consumer, consumer group, table manager or producer: see the module docstring
    app.boot_strategy = BootStrategy(app, enable_kafka=False)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(exposition(stats, extra_metrics), content_type="text/plain; version=0.0.4")

    @app.page("/riverbed/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        return web.json(stats.snapshot())

    return app
