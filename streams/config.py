"""One frozen settings object, loaded from a TOML file plus environment overrides.

Layout of the file (every key optional except ``[[models]]``)::

    [broker]   bootstrap_servers, reconnect_timeout_s, security_protocol, sasl_mechanism,
               sasl_username, sasl_password_file, allow_password_in_config, ssl_cafile,
               ssl_certfile, ssl_keyfile, ssl_check_hostname (the password itself:
               RIVERBED_BROKER__SASL_PASSWORD)
    [registry] url, username, password_file, ca_file, cert_file, key_file, check_hostname,
               request_timeout_s, cache_size, missing_ttl_s, backoff_initial_s,
               backoff_max_s, warn_interval_s
    [topics]   events, predictions, dead_letters, labels, training, replica_state, history,
               snapshots, metrics, partitions, replication_factor, min_insync_replicas,
               max_record_bytes
    [event]    schema, id_field, key_field, timestamp_field, label_field
    [limits]   max_features, max_abs_value, max_batch_records, max_event_bytes,
               max_event_id_length, max_classes
    [history]  enabled, snapshot_every_steps, snapshot_every_s, snapshot_key,
               snapshot_key_file, id_window, probe_size
    [labels]   enabled, ttl_s, max_pending, report_interval_s
    [worker]   group_id, web_host, web_port, profile, fetch_max_wait_ms,
               session_timeout_ms, heartbeat_interval_ms, lease_session_timeout_ms,
               commit_interval_s, max_unconfirmed_batches, model_per_partition,
               processing_guarantee, scale_out,
               api_token, api_max_body_bytes, api_max_events, api_history_entries,
               api_series_points
    [[models]] name, task, pipeline, seed, features, metrics, classes,
               replica_catch_up, replica_state_every_steps, replica_state_every_s

Environment overrides: ``RIVERBED_<SECTION>__<FIELD>``, e.g.
``RIVERBED_BROKER__BOOTSTRAP_SERVERS=kafka:9092`` or ``RIVERBED_TOPICS__PARTITIONS=8``.
Secrets never come from the file: ``registry.password`` only from the environment
(``RIVERBED_REGISTRY__PASSWORD``) or through ``registry.password_file``.
Files named in the config (``*_file``, an ``.avsc`` schema) are taken relative to the config
file's directory; ``~`` is expanded.
Any invalid value raises :class:`~streams.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from riverbed.streams.errors import ConfigError

ENV_PREFIX = "RIVERBED_"
#: Shortest accepted ``worker.api_token``.
MIN_TOKEN_CHARS = 16


#: How clients reach the brokers (Kafka's ``security.protocol`` values).
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: SASL mechanisms riverbed's clients speak.
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
#: The environment variable that carries the SASL password (the usual way to give it).
SASL_PASSWORD_ENV = "RIVERBED_BROKER__SASL_PASSWORD"


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    """Where Kafka is, how to connect to it, and how long a worker waits for it.

    Security: ``security_protocol`` SSL or SASL_SSL encrypts (``ssl_cafile`` to trust a
    private CA, else the system's CAs; ``ssl_certfile``/``ssl_keyfile`` for mutual TLS);
    SASL_PLAINTEXT or SASL_SSL authenticates with ``sasl_mechanism`` as ``sasl_username``.
    The password comes from ``RIVERBED_BROKER__SASL_PASSWORD`` or from
    ``sasl_password_file`` (read when a client is built); a ``sasl_password`` in the TOML
    file is refused unless ``allow_password_in_config = true``. It is never printed
    (``repr`` hides it). File paths are relative to the config file's directory.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    #: Deprecated spelling of ``registry.url`` (still read; both set must agree).
    schema_registry_url: str | None = None
    #: How long a worker waits for an unreachable broker (not ready meanwhile, outputs and
    #: history appends held) before it exits non-zero for its supervisor to restart it.
    reconnect_timeout_s: float = 60.0
    security_protocol: SecurityProtocol = "PLAINTEXT"
    #: Required with SASL_PLAINTEXT and SASL_SSL.
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    #: Prefer the environment variable; see the class docstring.
    sasl_password: str | None = dataclasses.field(default=None, repr=False)
    #: A file holding the password (trailing newline ignored), e.g. a mounted secret.
    sasl_password_file: str | None = None
    #: Accept ``sasl_password`` written in clear in the TOML file (off: refused).
    allow_password_in_config: bool = False
    #: PEM file of the CA(s) that signed the brokers' certificates (None: system CAs).
    ssl_cafile: str | None = None
    #: Client certificate (PEM) for mutual TLS; its key in ``ssl_keyfile`` or in the same file.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Check that the broker's certificate names the host the client connects to.
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        """Whether connections are encrypted (SSL or SASL_SSL)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether connections authenticate with SASL."""
        return self.security_protocol.startswith("SASL_")


@dataclasses.dataclass(frozen=True)
class RegistrySettings:
    """The (optional) Confluent-API schema registry: where, with which credentials, how to wait.

    Used by the async client ``riverbed.streams.registry.RegistryClient``.
    """

    #: Base URL of a Confluent-API registry (``http(s)://host:8081``, or e.g. Apicurio's
    #: ``.../apis/ccompat/v7``); when set, payloads use Confluent framing. No credentials
    #: in the URL: use ``username`` and the password settings.
    url: str | None = None
    #: HTTP basic auth user (Confluent Cloud: the API key).
    username: str | None = None
    #: Basic auth password: from the environment ``RIVERBED_REGISTRY__PASSWORD`` only
    #: (refused in the TOML file); never logged, never in ``repr``.
    password: str | None = dataclasses.field(default=None, repr=False)
    #: A file whose first line is the password (``~`` is expanded).
    password_file: str | None = None
    #: CA bundle (PEM) to verify an https registry with; None: the system's CAs.
    ca_file: str | None = None
    #: Client certificate (PEM) for mutual TLS, and its key (None: the key is in cert_file).
    cert_file: str | None = None
    key_file: str | None = None
    #: Check that the registry's certificate names the host of ``url``.
    check_hostname: bool = True
    #: One HTTP request's limit; a timeout is retried like a 5xx.
    request_timeout_s: float = 5.0
    #: Schemas kept by id (LRU), and as many "no such id" answers.
    cache_size: int = 1000
    #: How long a 404 ("no such schema id") is believed before the registry is asked again.
    missing_ttl_s: float = 10.0
    #: Retry delays after 5xx/timeouts/connection errors: doubling from the first to the max.
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    #: At most one warning line per this many seconds while the registry is unavailable.
    warn_interval_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class TopicSettings:
    """Names and partitioning of every topic riverbed reads or writes."""

    events: str = "riverbed.events"
    predictions: str = "riverbed.predictions"
    dead_letters: str = "riverbed.dead-letters"
    labels: str = "riverbed.labels"
    training: str = "riverbed.training"
    #: models' states for replicas that load them (``replica_catch_up = "state"``): a
    #: cache with one hour's retention, provisioned with ``scale_out = "replicas"``
    replica_state: str = "riverbed.replica-state"
    history: str = "riverbed.history"
    snapshots: str = "riverbed.snapshots"
    metrics: str = "riverbed.metrics"
    pending: str = "riverbed.pending"
    #: Partitions of the events topic (and predictions, labels: co-partitioned).
    partitions: int = 4
    replication_factor: int = 1
    #: ``min.insync.replicas`` of every topic riverbed provisions (with ``acks=all``, a
    #: write succeeds only once this many replicas hold it); <= replication_factor
    min_insync_replicas: int = 1
    #: the largest record riverbed writes (``max.message.bytes`` of the history, pending,
    #: training and replica-state topics it creates, and its producers' request size): one
    #: batch's history or pending-log record holds every example's features, about
    #: ``max_batch_records`` x features x 11 bytes (Kafka's default, 1 MiB, fits ~45
    #: features in a batch of 2,000). A worker refuses to start when its models could
    #: write more (``streams/topics.py: batch_record_bytes``).
    max_record_bytes: int = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class EventSettings:
    """The event schema and which of its fields are metadata rather than features."""

    #: A shipped schema name (``agrawal_event``) or a path to an ``.avsc`` file.
    schema: str = "agrawal_event"
    id_field: str = "event_id"
    key_field: str = "key"
    timestamp_field: str = "timestamp"
    label_field: str = "label"


@dataclasses.dataclass(frozen=True)
class LimitSettings:
    """Validation limits applied to every event before any model sees it."""

    max_features: int = 256
    max_abs_value: float = 1e12
    max_batch_records: int = 2000
    max_event_bytes: int = 1_048_576
    #: Characters an event id may have (events and labels): every id is kept in the
    #: history, the pending log and the dedup window, so its length bounds their records.
    max_event_id_length: int = 256
    #: Distinct classes a multiclass model without a ``classes`` list may learn.
    max_classes: int = 64


#: The shortest input fetch wait accepted. The embedded broker (Tansu) answers a fetch with
#: what it could read within the wait; under load (two cores, workers polling every 5 ms)
#: its fetches took longer than 5 ms and a worker that had fallen behind -- the new owner of
#: a SIGKILLed worker's partitions -- received nothing, ever (reproduced after three kills;
#: 20 ms read on through eight). Apache Kafka answers as soon as records arrive, so a longer
#: wait costs nothing there.
MIN_FETCH_WAIT_MS = 20


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Consumer group, web server and fetch behaviour of a worker."""

    group_id: str = "riverbed"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: ``throughput`` (fetch wait 100 ms) or ``low-latency`` (20 ms).
    profile: Literal["throughput", "low-latency"] = "throughput"
    #: The inputs' fetch wait (overrides the profile), at least ``MIN_FETCH_WAIT_MS``. A
    #: fetch returns as soon as records are there; the wait matters when a topic is idle.
    fetch_max_wait_ms: int | None = None
    session_timeout_ms: int = 3000
    heartbeat_interval_ms: int = 300
    #: How long a dead active worker holds the lease of the global models before a standby
    #: takes over (``streams/lease.py``). Apache Kafka refuses values below its
    #: ``group.min.session.timeout.ms`` (6000 by default).
    lease_session_timeout_ms: int = 1500
    commit_interval_s: float = 1.0
    #: Batches predicted and learned in memory but not yet durable (outputs acked, Learned
    #: appended) at most. This bounds how far the live model runs ahead of its history,
    #: i.e. what a SIGKILL makes the next owner predict again (<= this x
    #: limits.max_batch_records events); lower = fewer repeats, less pipelining.
    max_unconfirmed_batches: int = 8
    #: One independent model (and history) per input partition, named ``<model>@p<N>``.
    #: Workers then scale out: each owns the models of the partitions it is assigned.
    #: Off (default): one model per spec learns from every partition, one worker at a time.
    model_per_partition: bool = False
    #: ``at_least_once`` (default): outputs acknowledged before the history, offsets
    #: committed after it; a crash re-sends predictions. ``exactly_once`` (Apache Kafka,
    #: global models): each batch's predictions, dead letters, pending-log records,
    #: ``Learned`` record and input offsets commit in ONE Kafka transaction; consumers
    #: reading with ``isolation.level=read_committed`` see every prediction once.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: How several workers share the global models. ``standby`` (default): one active
    #: worker predicts and learns, the others follow the history, ready to take over.
    #: ``replicas``: every worker predicts its share of the input partitions with a local
    #: replica that follows the history; labelled examples go to ``topics.training`` and
    #: the lease holder (``streams/lease.py``) is the single learner of every global model.
    scale_out: Literal["standby", "replicas"] = "standby"
    #: Bearer token of the worker's HTTP API (``Authorization: Bearer <token>``), at least
    #: 16 characters; set it with RIVERBED_WORKER__API_TOKEN. Required when ``web_host`` is
    #: not a loopback address (the worker refuses to start without it); when set, every
    #: page but ``/``, its static files, ``/healthz`` and ``/readyz`` asks for it.
    api_token: str | None = dataclasses.field(default=None, repr=False)
    #: Largest request body the API reads (bytes); a larger one is refused with 413.
    api_max_body_bytes: int = 1_048_576
    #: Most events one ``POST /models/{name}/predict`` may carry (the model lock is held
    #: while they are predicted, so this bounds how long a request can delay a batch).
    api_max_events: int = 1000
    #: History entries (merged learn runs, snapshots, claims, rollbacks, annotations) the
    #: API keeps per model in memory; older ones are dropped first.
    api_history_entries: int = 5000
    #: Metrics reports (points of the page's chart) the API keeps per model.
    api_series_points: int = 2000

    @property
    def effective_fetch_max_wait_ms(self) -> int:
        """The fetch wait: explicit setting, else the profile's default."""
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return MIN_FETCH_WAIT_MS if self.profile == "low-latency" else 100


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """Delayed labels: how long to wait, how much to hold, how often to report."""

    enabled: bool = True
    ttl_s: float = 3600.0
    max_pending: int = 200_000
    report_interval_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class HistorySettings:
    """The event-sourced model history: snapshot cadence and signing key."""

    enabled: bool = True
    #: Each snapshot carries the dedup window (``id_window`` ids, ~4 MB at 200k) and costs
    #: ~45 ms; restore folds at most this many steps after the newest snapshot.
    snapshot_every_steps: int = 100_000
    snapshot_every_s: float = 60.0
    #: Hex HMAC key for snapshots; prefer the env var RIVERBED_HISTORY__SNAPSHOT_KEY.
    snapshot_key: str | None = None
    #: Used when no key is given: created (0600) on first use. ``~`` is expanded.
    snapshot_key_file: str = "~/.riverbed/snapshot.key"
    #: Applied event ids remembered for deduplication.
    id_window: int = 200_000
    #: Feature dicts in the probe set used for fingerprints.
    probe_size: int = 16
    #: Every history record is signed with the snapshot key (header ``riverbed.sig``) and
    #: readers skip, and count, one whose signature does not hold. True also folds unsigned
    #: records: only for histories written before records were signed (2026-12-02), and it
    #: lets anyone who can write to the topic teach the model.
    accept_unsigned_records: bool = False

    def __repr__(self) -> str:  # never print the key
        return (f"HistorySettings(enabled={self.enabled}, snapshot_every_steps="
                f"{self.snapshot_every_steps}, snapshot_every_s={self.snapshot_every_s}, "
                f"snapshot_key={'<set>' if self.snapshot_key else None}, "
                f"accept_unsigned_records={self.accept_unsigned_records})")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """One online model: a River pipeline given as data, resolved by explicit lookup."""

    name: str
    task: Literal["classification", "regression"] = "classification"
    #: e.g. ``({"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}})``
    pipeline: tuple[Mapping[str, Any], ...] = ()
    seed: int = 42
    #: Allowlist of feature names; ``None`` means every non-metadata field.
    features: tuple[str, ...] | None = None
    #: River metric class names (``river.metrics``); None = defaults for the task.
    metrics: tuple[str, ...] | None = None
    #: The classes a classifier may learn (labels outside are dead letters
    #: ``invalid_label``); None: a binary model takes 0/1 (or False/True), a multiclass one
    #: the event schema's label type up to ``limits.max_classes`` classes.
    classes: tuple[bool | int | str, ...] | None = None
    #: With ``worker.scale_out = "replicas"``: how this model's replicas catch up with its
    #: learner. ``examples`` (default): re-apply every ``Learned`` record's examples --
    #: exact (a replica's state is the learner's at every step), but every replica spends
    #: the learn CPU. ``state``: load the estimator the learner publishes on
    #: ``topics.replica_state`` every ``replica_state_every_steps`` steps or
    #: ``replica_state_every_s`` seconds -- a replica spends a load (~0.3 ms for a
    #: logistic regression) instead of the learning, and predicts with a state up to that
    #: many steps old; for models whose learn step is expensive (trees, ensembles).
    replica_catch_up: Literal["examples", "state"] = "examples"
    replica_state_every_steps: int = 1000
    replica_state_every_s: float = 1.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a riverbed process needs; build it with :func:`load_settings`."""

    broker: BrokerSettings = BrokerSettings()
    registry: RegistrySettings = RegistrySettings()
    topics: TopicSettings = TopicSettings()
    event: EventSettings = EventSettings()
    limits: LimitSettings = LimitSettings()
    worker: WorkerSettings = WorkerSettings()
    history: HistorySettings = HistorySettings()
    labels: LabelSettings = LabelSettings()
    models: tuple[ModelSettings, ...] = ()
    #: Directory of the config file; relative schema paths resolve against it.
    base_dir: Path = Path(".")

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        """A copy pointing at other brokers (used by the embedded demo and tests)."""
        broker = dataclasses.replace(self.broker, bootstrap_servers=bootstrap_servers)
        return dataclasses.replace(self, broker=broker)


_SECTIONS: dict[str, type] = {
    "broker": BrokerSettings,
    "registry": RegistrySettings,
    "topics": TopicSettings,
    "event": EventSettings,
    "limits": LimitSettings,
    "worker": WorkerSettings,
    "history": HistorySettings,
    "labels": LabelSettings,
}


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (TOML), apply ``RIVERBED_*`` overrides from ``env``, validate."""
    raw: dict[str, Any] = {}
    base_dir = Path(".")
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError("path", f"config file {str(file)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("path", f"{file} is not valid TOML: {exc}") from None
        base_dir = file.resolve().parent
    return settings_from_dict(raw, env=os.environ if env is None else env, base_dir=base_dir)


def settings_from_dict(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, base_dir: Path = Path(".")
) -> Settings:
    """Build and validate :class:`Settings` from parsed TOML data and env overrides."""
    unknown = set(raw) - set(_SECTIONS) - {"models"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown section")
    sections = {name: dict(raw.get(name, {})) for name in _SECTIONS}
    if "password" in sections["registry"]:
        raise ConfigError("registry.password", "never in the config file: set the environment "
                          "variable RIVERBED_REGISTRY__PASSWORD or registry.password_file")
    for key, value in (env or {}).items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, _, field = key[len(ENV_PREFIX) :].lower().partition("__")
            if section not in sections:
                raise ConfigError(key, f"unknown section {section!r}")
            sections[section][field] = value
    built = {name: _build(cls, sections[name], name) for name, cls in _SECTIONS.items()}
    built["registry"] = _registry_url(built["broker"], built["registry"])
    models = tuple(_build_model(m, i) for i, m in enumerate(raw.get("models", [])))
    if not models:
        raise ConfigError("models", "declare at least one [[models]] entry")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("models.name", f"model names must be unique, got {names}")
    _check_password_source(raw.get("broker", {}), built["broker"])
    built["broker"] = _resolve_broker_paths(built["broker"], base_dir)
    built["registry"] = _resolve_registry_paths(built["registry"], base_dir)
    built["history"] = _resolve_history_paths(built["history"], base_dir)
    settings = Settings(models=models, base_dir=base_dir, **built)
    _check_ranges(settings)
    _check_security(settings.broker)
    _check_guarantee(settings)
    return settings


def _check_password_source(from_file: Mapping[str, Any], broker: BrokerSettings) -> None:
    """A password written in clear in the TOML file is refused unless explicitly allowed
    (config files end up in repositories, images and support tickets)."""
    if from_file.get("sasl_password") and not broker.allow_password_in_config:
        raise ConfigError("broker.sasl_password",
                          f"refused in the config file (in clear): set {SASL_PASSWORD_ENV} or "
                          "broker.sasl_password_file, or broker.allow_password_in_config = true")


def _resolve_file(value: str, base_dir: Path) -> str:
    """A file named in the config: ``~`` expanded, a relative path taken from the config
    file's directory (not the current one, which differs between a shell and a service)."""
    return str(base_dir / Path(value).expanduser())


def _resolve(value: str | None, base_dir: Path) -> str | None:
    """:func:`_resolve_file` of an optional file."""
    return None if value is None else _resolve_file(value, base_dir)


def _resolve_broker_paths(broker: BrokerSettings, base_dir: Path) -> BrokerSettings:
    """Certificate, key and password files relative to the config file's directory."""
    def resolve(value: str | None) -> str | None:
        return _resolve(value, base_dir)

    return dataclasses.replace(
        broker, sasl_password_file=resolve(broker.sasl_password_file),
        ssl_cafile=resolve(broker.ssl_cafile), ssl_certfile=resolve(broker.ssl_certfile),
        ssl_keyfile=resolve(broker.ssl_keyfile))


def _resolve_registry_paths(registry: RegistrySettings, base_dir: Path) -> RegistrySettings:
    """The registry's password, CA, certificate and key files, as for the broker's."""
    return dataclasses.replace(
        registry, password_file=_resolve(registry.password_file, base_dir),
        ca_file=_resolve(registry.ca_file, base_dir),
        cert_file=_resolve(registry.cert_file, base_dir),
        key_file=_resolve(registry.key_file, base_dir))


def _resolve_history_paths(history: HistorySettings, base_dir: Path) -> HistorySettings:
    """The snapshot key file, as for the broker's files."""
    return dataclasses.replace(
        history, snapshot_key_file=_resolve_file(history.snapshot_key_file, base_dir))


def _check_security(b: BrokerSettings) -> None:
    """The security settings fit together (the files themselves are read when a client is
    built: ``streams/security.py``)."""
    if b.uses_sasl:
        if b.sasl_mechanism is None:
            raise ConfigError("broker.sasl_mechanism",
                              f"required with security_protocol {b.security_protocol}: "
                              "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        if not b.sasl_username:
            raise ConfigError("broker.sasl_username",
                              f"required with security_protocol {b.security_protocol}")
        if b.sasl_password is None and b.sasl_password_file is None:
            raise ConfigError("broker.sasl_password",
                              f"required with security_protocol {b.security_protocol}: set "
                              f"{SASL_PASSWORD_ENV} or broker.sasl_password_file")
        if b.sasl_password is not None and b.sasl_password_file is not None:
            raise ConfigError("broker.sasl_password_file",
                              f"give the password once: {SASL_PASSWORD_ENV} or the file")
    else:
        for name in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file"):
            if getattr(b, name) is not None:
                raise ConfigError(f"broker.{name}",
                                  "only with security_protocol SASL_PLAINTEXT or SASL_SSL, "
                                  f"not {b.security_protocol}")
    if not b.uses_tls:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(b, name) is not None:
                raise ConfigError(f"broker.{name}", "only with security_protocol SSL or "
                                  f"SASL_SSL, not {b.security_protocol}")
    if b.ssl_keyfile is not None and b.ssl_certfile is None:
        raise ConfigError("broker.ssl_keyfile", "needs broker.ssl_certfile (mutual TLS)")


def _build_model(raw: Mapping[str, Any], index: int) -> ModelSettings:
    where = f"models[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a table")
    model = _build(ModelSettings, dict(raw), where)
    if not model.name or not model.name.replace("-", "_").replace(".", "_").isidentifier():
        raise ConfigError(f"{where}.name", f"{model.name!r} must be a simple identifier")
    if not model.pipeline:
        raise ConfigError(f"{where}.pipeline", "must list at least one estimator")
    if model.classes is not None:
        classes = list(model.classes)
        if model.task != "classification" or not classes:
            raise ConfigError(f"{where}.classes", "a non-empty list, for classification only")
        if not all(isinstance(c, bool | int | str) for c in classes) or len(
                {(type(c), c) for c in classes}) != len(classes):
            raise ConfigError(f"{where}.classes",
                              f"distinct booleans, integers or strings, got {classes!r}")
    if model.replica_state_every_steps < 1 or not model.replica_state_every_s > 0:
        raise ConfigError(f"{where}.replica_state_every_steps",
                          "replica_state_every_steps and replica_state_every_s must be > 0")
    for step in model.pipeline:
        if not isinstance(step, Mapping) or len(step) != 1:
            raise ConfigError(f"{where}.pipeline", f"each step is a one-key table, got {step!r}")
    return cast(ModelSettings, model)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            raise ConfigError(f"{where}.{name}", "unknown setting")
    kwargs = {n: _coerce(v, hints[n], f"{where}.{n}") for n, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(where, str(exc)) from None


def _coerce(value: Any, hint: Any, field: str) -> Any:  # noqa: C901 - one branch per type
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], field)
    if origin is Literal:
        if value not in args:
            raise ConfigError(field, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(field, f"must be a list, got {value!r}")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        if not isinstance(value, bool):
            raise ConfigError(field, f"must be a boolean, got {value!r}")
        return value
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(field, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or (hint is int and isinstance(value, float)):
            raise ConfigError(field, f"must be an integer, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(field, f"must be a string, got {value!r}")
        return value
    return value


def _check_guarantee(s: Settings) -> None:
    if s.worker.processing_guarantee == "exactly_once" and s.worker.model_per_partition:
        raise ConfigError("worker.processing_guarantee", "exactly_once needs global models "
                          "(one transactional writer per group); model_per_partition is on")
    if s.worker.scale_out == "replicas":
        refused = ("exactly_once is not supported with replicas (the training path is "
                   "at-least-once, deduplicated by the learner)"
                   if s.worker.processing_guarantee == "exactly_once" else
                   "replicas serve global models; model_per_partition is on"
                   if s.worker.model_per_partition else
                   "replicas follow the history; history.enabled is false"
                   if not s.history.enabled else None)
        if refused is not None:
            raise ConfigError("worker.scale_out", refused)


def _check_ranges(s: Settings) -> None:
    positive = {
        "broker.reconnect_timeout_s": s.broker.reconnect_timeout_s,
        "topics.partitions": s.topics.partitions,
        "topics.replication_factor": s.topics.replication_factor,
        "topics.min_insync_replicas": s.topics.min_insync_replicas,
        "topics.max_record_bytes": s.topics.max_record_bytes,
        "limits.max_features": s.limits.max_features,
        "limits.max_abs_value": s.limits.max_abs_value,
        "limits.max_batch_records": s.limits.max_batch_records,
        "limits.max_event_bytes": s.limits.max_event_bytes,
        "limits.max_event_id_length": s.limits.max_event_id_length,
        "limits.max_classes": s.limits.max_classes,
        "worker.session_timeout_ms": s.worker.session_timeout_ms,
        "worker.heartbeat_interval_ms": s.worker.heartbeat_interval_ms,
        "worker.lease_session_timeout_ms": s.worker.lease_session_timeout_ms,
        "worker.commit_interval_s": s.worker.commit_interval_s,
        "worker.max_unconfirmed_batches": s.worker.max_unconfirmed_batches,
        "worker.api_max_body_bytes": s.worker.api_max_body_bytes,
        "worker.api_max_events": s.worker.api_max_events,
        "worker.api_history_entries": s.worker.api_history_entries,
        "worker.api_series_points": s.worker.api_series_points,
        "history.snapshot_every_steps": s.history.snapshot_every_steps,
        "history.snapshot_every_s": s.history.snapshot_every_s,
        "history.id_window": s.history.id_window,
        "history.probe_size": s.history.probe_size,
        "labels.ttl_s": s.labels.ttl_s,
        "labels.max_pending": s.labels.max_pending,
        "labels.report_interval_s": s.labels.report_interval_s,
        "registry.request_timeout_s": s.registry.request_timeout_s,
        "registry.cache_size": s.registry.cache_size,
        "registry.missing_ttl_s": s.registry.missing_ttl_s,
        "registry.backoff_initial_s": s.registry.backoff_initial_s,
        "registry.backoff_max_s": s.registry.backoff_max_s,
        "registry.warn_interval_s": s.registry.warn_interval_s,
    }
    for field, value in positive.items():
        if not value > 0:
            raise ConfigError(field, f"must be > 0, got {value!r}")
    if s.topics.min_insync_replicas > s.topics.replication_factor:
        raise ConfigError("topics.min_insync_replicas",
                          f"{s.topics.min_insync_replicas} > topics.replication_factor "
                          f"{s.topics.replication_factor}: no write could ever succeed")
    wait = s.worker.fetch_max_wait_ms
    if wait is not None and wait < MIN_FETCH_WAIT_MS:
        raise ConfigError("worker.fetch_max_wait_ms", f"at least {MIN_FETCH_WAIT_MS} ms, got "
                          f"{wait}: the embedded broker gives a worker that fell behind nothing "
                          "with shorter waits under load (Apache Kafka answers as soon as "
                          "records arrive, so a longer wait costs nothing there)")
    if not 0 <= s.worker.web_port <= 65535:
        raise ConfigError("worker.web_port", f"must be a TCP port, got {s.worker.web_port}")
    token = s.worker.api_token
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError("worker.api_token", f"must be at least {MIN_TOKEN_CHARS} characters "
                          f"(got {len(token)})")
    if ":" not in s.broker.bootstrap_servers:
        raise ConfigError("broker.bootstrap_servers", "must be host:port[,host:port]")
    _check_registry(s.registry)


def _registry_url(broker: BrokerSettings, registry: RegistrySettings) -> RegistrySettings:
    """``registry.url``, or the deprecated ``broker.schema_registry_url`` (both: the same)."""
    old = broker.schema_registry_url
    if old is None or old == registry.url:
        return registry
    if registry.url is not None:
        raise ConfigError("registry.url", f"{registry.url!r} differs from the deprecated "
                          f"broker.schema_registry_url {old!r}; keep only registry.url")
    return dataclasses.replace(registry, url=old)


def _check_registry(r: RegistrySettings) -> None:
    """A usable registry URL; credentials and TLS files only where they can apply."""
    if r.backoff_max_s < r.backoff_initial_s:
        raise ConfigError("registry.backoff_max_s", f"must be >= registry.backoff_initial_s "
                          f"({r.backoff_initial_s:g}), got {r.backoff_max_s:g}")
    if r.url is None:
        return
    parsed = urllib.parse.urlsplit(r.url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError("registry.url", f"must be http(s)://host[:port][/path], got {r.url!r}")
    if parsed.username is not None or parsed.password is not None:
        raise ConfigError("registry.url", "no credentials in the URL: use registry.username "
                          "and RIVERBED_REGISTRY__PASSWORD or registry.password_file")
    if r.password is not None and r.password_file is not None:
        raise ConfigError("registry.password_file", "set the password or the password file, "
                          "not both")
    has_password = r.password is not None or r.password_file is not None
    if has_password != (r.username is not None):
        raise ConfigError("registry.username", "basic auth needs both registry.username and "
                          "a password (RIVERBED_REGISTRY__PASSWORD or registry.password_file)")
    if r.key_file is not None and r.cert_file is None:
        raise ConfigError("registry.key_file", "a client key needs registry.cert_file")
    if parsed.scheme == "http":
        for name in ("ca_file", "cert_file"):
            if getattr(r, name) is not None:
                raise ConfigError(f"registry.{name}", f"TLS settings need an https URL, "
                                  f"got {r.url!r}")
