"""The async client of a Confluent-API schema registry (aiohttp), and the batch prefetch.

The registry's API as riverbed uses it: ``GET /schemas/ids/{id}`` (a writer schema by
id) and ``POST /subjects/{subject}/versions`` (register, idempotent), both with content
type ``application/vnd.schemaregistry.v1+json``. Confluent Schema Registry, Karapace,
Redpanda and Apicurio (under ``/apis/ccompat/v7``) serve it.

Guarantees:

* **An outage makes callers wait, never fail an event.** A 5xx, 408, 429, a timeout, a
  refused or reset connection is retried with exponential backoff (``backoff_initial_s``
  doubling to ``backoff_max_s``, jittered), forever by default or up to
  ``give_up_after_s`` (then :class:`~streams.errors.SchemaRegistryError`, retriable).
  While it lasts: one warning line per ``warn_interval_s``, and one line when it ends.
* **Only a real 404 means "no such schema id"**: a 404 carrying a Confluent error body
  (``error_code`` 404xx). It is remembered for ``missing_ttl_s`` only. A 404 without one
  (a URL that is not the API root) is a configuration error, like 401/403 (credentials),
  other 4xx and TLS failures (an untrusted or misnamed certificate): raised at once as
  a non-retriable :class:`~streams.errors.SchemaRegistryError`.
* Bounded memory: see :mod:`riverbed.streams.schema_cache`.
* The password is sent as HTTP basic auth, never logged and never in ``repr``; the URL
  may not carry credentials (checked by the config).

The codec stays pure: it reads this client's cache synchronously (:class:`SchemaRegistry`
protocol of :mod:`riverbed.streams.codec`); :class:`SchemaPrefetch` fills it before each
batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import aiohttp

from riverbed.streams.codec import ConfluentCodec
from riverbed.streams.config import RegistrySettings
from riverbed.streams.errors import ConfigError, SchemaNotLoadedError, SchemaRegistryError
from riverbed.streams.schema_cache import SchemaCache, SchemaJson

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: statuses worth retrying besides 5xx: request timeout, too many requests
_RETRY_STATUSES = frozenset({408, 429})
#: concurrent requests to the registry (a batch may need many ids at once)
_CONNECTIONS = 8


def ssl_context(settings: RegistrySettings) -> ssl.SSLContext | None:
    """The TLS context for an https registry (None for http): the system's or
    ``ca_file``'s CAs, the client certificate for mutual TLS, the hostname check."""
    if settings.url is None or urllib.parse.urlsplit(settings.url).scheme != "https":
        return None
    try:
        context = ssl.create_default_context(cafile=_path(settings.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("registry.ca_file", f"cannot load {settings.ca_file}: {exc}") from None
    context.check_hostname = settings.check_hostname  # the chain is verified either way
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(str(_path(settings.cert_file)), _path(settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("registry.cert_file", f"cannot load the client certificate "
                              f"{settings.cert_file} / key {settings.key_file}: {exc}") from None
    return context


def basic_auth(settings: RegistrySettings) -> aiohttp.BasicAuth | None:
    """Basic auth from ``username`` and the password (environment or file), if set."""
    if settings.username is None:
        return None
    password = settings.password
    if password is None and settings.password_file is not None:
        try:
            lines = Path(settings.password_file).expanduser().read_text().splitlines()
        except OSError as exc:  # the message names the file, never its content
            raise ConfigError("registry.password_file",
                              f"cannot read {settings.password_file}: {exc.strerror}") from None
        password = lines[0] if lines else ""
    return aiohttp.BasicAuth(settings.username, password or "")


def _path(name: str | None) -> str | None:
    return None if name is None else str(Path(name).expanduser())


class _Outage:
    """One stretch of failed requests: when it began, the last reason, when we said so."""

    def __init__(self, url: str, warn_interval_s: float, clock: Callable[[], float]) -> None:
        self.url, self.warn_interval_s, self.clock = url, warn_interval_s, clock
        self.since: float | None = None
        self.reason = ""
        self.failures = 0
        self._warned: float | None = None

    def failed(self, reason: str) -> None:
        if self.since is None:
            self.since, self.failures, self._warned = self.clock(), 0, None
        self.reason = reason
        self.failures += 1

    def waiting(self, requests: int) -> None:
        """Called before each backoff: warn now and then, not per attempt."""
        now = self.clock()
        if self._warned is None or now - self._warned >= self.warn_interval_s:
            self._warned = now
            log.warning("schema registry %s unavailable for %.1fs (%s); %d request(s) waiting, "
                        "retrying", self.url, self.duration(), self.reason, requests)

    def duration(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("schema registry %s answers again after %.1fs (%d failed requests)",
                        self.url, self.duration(), self.failures)
            self.since = None


class RegistryClient:
    """Async client of one Confluent-API registry, and (through its cache) the codec's
    synchronous :class:`~riverbed.streams.codec.SchemaRegistry`. See the module docstring
    for what it retries and what it raises. Use within one event loop; ``close`` it."""

    def __init__(
        self, settings: RegistrySettings, *, give_up_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if settings.url is None:
            raise ConfigError("registry.url", "no schema registry configured")
        self.url = settings.url.rstrip("/")
        self.settings = settings
        self.give_up_after_s = give_up_after_s
        self.cache = SchemaCache(settings.cache_size, settings.missing_ttl_s, clock)
        self._ssl = ssl_context(settings)
        self._auth = basic_auth(settings)
        self._sleep, self._jitter = sleep, jitter
        self._outage = _Outage(self.url, settings.warn_interval_s, clock)
        self._session: aiohttp.ClientSession | None = None
        #: HTTP requests sent, and those that failed in a way worth retrying
        self.requests = 0
        self.failed_requests = 0

    def __repr__(self) -> str:  # never the password
        return f"RegistryClient(url={self.url!r}, user={self.settings.username!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections (the cache stays usable)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the codec's synchronous view: memory only ------------------------------------

    def schema_by_id(self, schema_id: int) -> SchemaJson | None:
        """The cached writer schema of ``schema_id``, None for a (remembered) 404."""
        return self.cache.lookup(schema_id)

    def id_of(self, subject: str, schema: Mapping[str, Any]) -> int:
        """The id ``schema`` was registered with under ``subject`` by :meth:`register`."""
        schema_id = self.cache.id_of(subject, schema)
        if schema_id is None:
            raise SchemaNotLoadedError(f"{subject}: the schema was not registered before "
                                       "encoding (await RegistryClient.register first)")
        return schema_id

    # -- the registry's API -----------------------------------------------------------

    async def prefetch(self, ids: Iterable[int]) -> None:
        """Make every id in ``ids`` answerable from memory (its schema or a 404); they stay
        cached at least until the next prefetch. Waits out an outage (module docstring)."""
        wanted = set(ids)
        self.cache.pin(wanted)
        pending = sorted(self.cache.wanted(wanted))
        attempt = 0
        while pending:
            # one request first: while the registry is away, a batch of N ids costs one
            # failed request per backoff step, not N
            if not await self._fetch(pending[0]):
                failed = pending
            else:
                answers = await asyncio.gather(*(self._fetch(i) for i in pending[1:]),
                                               return_exceptions=True)
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                failed = [i for i, ok in zip(pending[1:], answers, strict=True) if not ok]
            pending = failed
            if pending:
                await self._backoff(attempt, len(pending))
                attempt += 1

    async def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id; waits out
        an outage; a refusal (e.g. 409 incompatible) is a non-retriable error."""
        known = self.cache.id_of(subject, schema)
        if known is not None:
            return known
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        attempt = 0
        while (answer := await self._request("POST", path, {"schema": json.dumps(schema)})
               ) is None:
            await self._backoff(attempt, 1)
            attempt += 1
        status, body = answer
        if status != 200:
            raise self._refused(status, body, f"registering a schema under {subject!r}")
        try:
            schema_id = int(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError):
            raise SchemaRegistryError(f"schema registry {self.url} answered registering "
                                      f"{subject!r} without an id", retriable=False) from None
        self.cache.put_id(subject, schema, schema_id)
        self.cache.put(schema_id, schema)
        return schema_id

    # -- one request ------------------------------------------------------------------

    async def _fetch(self, schema_id: int) -> bool:
        """Ask for one schema id; False: no answer (retry later)."""
        answer = await self._request("GET", f"/schemas/ids/{schema_id}")
        if answer is None:
            return False
        status, body = answer
        if status == 404 and _confluent_not_found(body):
            self.cache.put_missing(schema_id)
            return True
        if status != 200:
            raise self._refused(status, body, f"fetching schema id {schema_id}")
        try:
            answered = json.loads(body)
            kind = answered.get("schemaType", "AVRO")
            schema = json.loads(answered["schema"]) if kind == "AVRO" else f"{kind} schema"
        except (ValueError, KeyError, TypeError, AttributeError):
            self._outage.failed(f"unreadable answer for schema id {schema_id}")
            return False  # not the registry's usual answer (a proxy's page?): retried
        self.cache.put(schema_id, schema)
        return True

    async def _request(self, method: str, path: str,
                       payload: Mapping[str, Any] | None = None) -> tuple[int, bytes] | None:
        """One HTTP request: (status, body), or None for what is worth retrying."""
        data = None if payload is None else json.dumps(payload).encode()
        self.requests += 1
        try:
            async with self._http().request(method, self.url + path, data=data, headers=(
                    None if data is None else {"Content-Type": CONTENT_TYPE})) as response:
                status, body = response.status, await response.read()
        except aiohttp.ClientSSLError as exc:  # untrusted/misnamed certificate, not TLS
            raise SchemaRegistryError(f"TLS with the schema registry {self.url} failed: {exc}",
                                      retriable=False) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed_requests += 1
            self._outage.failed(f"{type(exc).__name__}: {exc}" if str(exc)
                                else type(exc).__name__)
            return None
        if status >= 500 or status in _RETRY_STATUSES:
            self.failed_requests += 1
            self._outage.failed(f"HTTP {status}")
            return None
        self._outage.recovered()
        return status, body

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else True,
                                               limit=_CONNECTIONS),
                auth=self._auth,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s),
                headers={"Accept": f"{CONTENT_TYPE}, application/json"})
        return self._session

    async def _backoff(self, attempt: int, waiting: int) -> None:
        """Wait before retrying; give up past ``give_up_after_s`` if set."""
        if self.give_up_after_s is not None and self._outage.duration() >= self.give_up_after_s:
            raise SchemaRegistryError(
                f"schema registry {self.url} unavailable for {self._outage.duration():.0f}s "
                f"({self._outage.reason})")
        self._outage.waiting(waiting)
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(attempt, 30))
        await self._sleep(delay * (0.5 + self._jitter() / 2))

    def _refused(self, status: int, body: bytes, doing: str) -> SchemaRegistryError:
        if status in (401, 403):
            what = f"refused the credentials (HTTP {status})"
        elif status == 404:
            what = "answered 404 without a Confluent error: is registry.url the API root?"
        else:
            what = f"refused (HTTP {status}: {_message(body)})"
        return SchemaRegistryError(f"schema registry {self.url} {what} {doing}",
                                   retriable=False, status=status)


def _confluent_not_found(body: bytes) -> bool:
    """A Confluent-API 'not found' answer: ``{"error_code": 404xx, ...}``."""
    try:
        code = json.loads(body).get("error_code")
    except (ValueError, AttributeError):
        return False
    return isinstance(code, int) and 40400 <= code <= 40499


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


class _Record(Protocol):
    """What the prefetch reads of a consumed record."""

    topic: str
    value: bytes | None


class SchemaPrefetch:
    """Before a batch is processed: every schema id its records carry is in ``client``'s
    cache, and every encoder's schema is registered (the first time). Awaited by the batch
    task, so the pure processor never waits and never sees a registry outage: the batch
    waits instead (at-least-once is unaffected: nothing is committed meanwhile)."""

    def __init__(self, client: RegistryClient, decoders: Mapping[str, object],
                 encoders: Sequence[object] = ()) -> None:
        self.client = client
        #: topic -> the Confluent codec that decodes its records
        self.decoders = {t: c for t, c in decoders.items() if isinstance(c, ConfluentCodec)}
        self._unregistered = [c for c in encoders if isinstance(c, ConfluentCodec)]

    async def __call__(self, records: Sequence[_Record]) -> None:
        if self._unregistered:
            await register_encoders(self.client, self._unregistered)
            self._unregistered = []
        ids: set[int] = set()
        for topic, codec in self.decoders.items():
            ids |= codec.unknown_ids(r.value for r in records if r.topic == topic)
        if ids:
            await self.client.prefetch(ids)


async def register_encoders(client: RegistryClient | None, codecs: Iterable[object]) -> None:
    """Register the schema of every Confluent codec in ``codecs`` (waits out an outage),
    so that their ``encode`` finds its id in memory."""
    if client is None:
        return
    for codec in codecs:
        if isinstance(codec, ConfluentCodec):
            await client.register(codec.subject, codec.schema)
