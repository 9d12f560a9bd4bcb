"""The one exception hierarchy of riverbed.

Every error a user can act on derives from :class:`RiverbedError`. Errors that
describe a single bad *event* (decode, validation) carry a short machine-readable
``reason`` that becomes the dead-letter reason code and the metrics label.
"""

from __future__ import annotations


class RiverbedError(Exception):
    """Root of every riverbed error."""


class ConfigError(RiverbedError):
    """The configuration is invalid; ``field`` names the offending setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid config {field}: {message}")
        self.field = field


class BrokerError(RiverbedError):
    """The embedded broker could not be found, started or stopped."""


class TopicError(RiverbedError):
    """A topic could not be created, or exists with the wrong partition count."""


class ModelSpecError(RiverbedError):
    """A model spec names something outside River, or something that is not an estimator."""


class EventError(RiverbedError):
    """One event cannot be processed; it goes to the dead-letter topic with ``reason``.
    ``field`` names the event field at fault, where one is (the HTTP API reports it)."""

    reason: str = "invalid_event"
    field: str | None = None

    def __init__(self, message: str, reason: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if field is not None:
            self.field = field


class DecodeError(EventError):
    """The bytes are not a valid Avro record of the expected schema."""

    reason = "decode_error"


class ValidationError(EventError):
    """The record decoded but its features or label must not reach a model."""

    reason = "invalid_features"


class SchemaRegistryError(RiverbedError):
    """The schema registry refused a request, or stayed unreachable past a caller's limit.

    ``retriable`` is True for an outage (5xx, timeout, connection refused or reset: trying
    again may help) and False for what only a person can fix (wrong credentials, an
    untrusted certificate, a schema the registry rejects). ``status`` is the HTTP status,
    when there was one. A schema id the registry does not know is *not* this error: the
    codec dead-letters those events as ``unknown_schema_id``.
    """

    def __init__(self, message: str, *, retriable: bool = True,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status


class SchemaNotLoadedError(SchemaRegistryError):
    """The codec met a schema id (or needed its own schema's id) that nobody resolved
    beforehand: the caller must ``await`` the registry client's ``prefetch``/``register``
    before decoding/encoding. A bug in the caller, never an event's fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class OwnershipError(RiverbedError):
    """Records arrived for an input partition no model of this worker serves (a broken
    invariant: processing them would commit their offsets without learning them)."""


class TakeoverError(RiverbedError):
    """A worker could not take over the models of partitions it was assigned."""


class UsageError(RiverbedError):
    """A command asks for something that does not exist or is out of range (an unknown
    model or dataset, a negative count, a malformed time): the CLI exits 2."""


class HistoryError(RiverbedError):
    """A model's history cannot answer the request: no history, a seq or lineage it never
    reached, a time before the model existed (the CLI exits 1)."""


class LeaseLostError(RiverbedError):
    """An active worker lost the lease of its global models to another worker (it was
    unreachable past ``worker.lease_session_timeout_ms``, e.g. frozen or starved of CPU).
    The worker exits with :attr:`exit_code` 75 (``EX_TEMPFAIL``), not 1: nothing is wrong
    with it, and a supervisor should start it again -- it comes back as a standby."""

    exit_code = 75


class BrokerSecurityError(BrokerError):
    """The broker answered but refused this connection's security settings: an untrusted
    or mismatched certificate, a TLS/plaintext mismatch, wrong SASL credentials or
    mechanism. Retrying cannot help: the process stops with this one line."""


class BrokerUnavailableError(BrokerError):
    """The broker stayed unreachable longer than ``broker.reconnect_timeout_s``."""


class TransactionsUnavailableError(RiverbedError):
    """``worker.processing_guarantee = "exactly_once"`` asked of a broker whose
    transactions do not work (detected at start, before anything is written)."""

    def __init__(self, bootstrap_servers: str, why: str) -> None:
        super().__init__(
            'worker.processing_guarantee = "exactly_once" needs a broker with working '
            f"transactions; {bootstrap_servers} {why}: use Apache Kafka (or a compatible "
            'broker with transactions), or "at_least_once"')
