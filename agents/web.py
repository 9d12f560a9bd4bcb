"""The worker's HTTP API and web page, on the Faust app's web server (next to ``/metrics``).

Routes (the OpenAPI document, ``streams/api_schema.py``, is served at ``/openapi.json``):
``GET /healthz``, ``GET /readyz``, ``GET /models``, ``POST /models/{name}/predict``,
``GET /models/{name}/history``, ``GET /models/{name}/metrics``, and the page ``GET /``
with its static files (``agents/static/``).

Guarantees: nothing a request sends reaches a model's state. A prediction is validated
like a Kafka event (same reasons as dead letters) and made under the worker's model lock
(never interleaved with a batch or a takeover) by :func:`~streams.predict_only.predict_only`,
which leaves the model as it was. Any failure inside a handler is answered (JSON, 4xx for
the request's faults, 500 for ours), never raised into the worker. Security: the server
binds ``worker.web_host`` (127.0.0.1 by default); another address needs
``worker.api_token`` (the worker refuses to start without it); with a token every route but
the page, ``/healthz`` and ``/readyz`` asks for ``Authorization: Bearer <token>``,
compared in constant time. Bodies and lists are bounded by ``worker.api_max_body_bytes``
and ``worker.api_max_events``.

What the API needs of a worker is :class:`WorkerPort`; :func:`worker_port` adapts a
:class:`~agents.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from riverbed.schemas import load_schema
from riverbed.streams.api_schema import (
    ApiError,
    EventForm,
    history_query,
    json_safe,
    openapi_document,
    parse_json,
    predict_events,
    series_query,
)
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.errors import ConfigError, EventError
from riverbed.streams.evaluation import ModelMonitor
from riverbed.streams.features import FeatureExtractor, check_event_id
from riverbed.streams.history_feed import HistoryFeed
from riverbed.streams.history_log import record_key
from riverbed.streams.models import OnlineModel
from riverbed.streams.predict_only import WouldLearn, predict_only
from riverbed.streams.snapshots import snapshot_key, snapshot_verifier
from riverbed.streams.telemetry import WorkerStats

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".txt": "text/plain", ".png": "image/png", ".svg": "image/svg+xml"}
#: Pages anyone may load: the page and its files hold no data; probes need no token.
_OPEN = ("/", "/healthz", "/readyz")
#: a worker's roles once its models are restored from the history (``worker.role`` before
#: that is ``starting``); ``replica`` and ``learner`` are scale-out ``replicas`` roles
RESTORED_ROLES = frozenset({"active", "standby", "replica", "learner"})
_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "img-src 'self' data:; frame-ancestors 'none'"}
#: How long a prediction waits for the model lock (a takeover can hold it for seconds).
LOCK_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Served:
    """One model of the worker as the API sees it."""

    model: OnlineModel
    extractor: FeatureExtractor
    monitor: ModelMonitor | None
    epoch: int | None
    durable_seq: int | None
    fenced: bool
    partition: int | None


class WorkerPort(Protocol):
    """What the API needs of a worker."""

    settings: Settings
    stats: WorkerStats
    model_lock: asyncio.Lock

    def served(self) -> list[Served]:
        """The models served now (per-partition ones come and go)."""
        ...

    def lag(self) -> int:
        """Records behind the high-water marks over this worker's input partitions."""
        ...


class _WorkerAdapter:
    """A :class:`WorkerPort` over an ``agents.worker.Worker``."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.settings: Settings = worker.settings
        self.stats: WorkerStats = worker.stats
        self.model_lock: asyncio.Lock = worker.model_lock

    def served(self) -> list[Served]:
        served = []
        for slot in self.worker.processor.slots:
            learner: Any = slot.learner  # an agents.learner.Learner (epoch, fencing)
            served.append(Served(
                slot.model, slot.extractor, slot.monitor, getattr(learner, "epoch", None),
                getattr(learner, "durable_seq", None), bool(getattr(learner, "fenced", False)),
                slot.partition))
        return served

    def lag(self) -> int:
        return sum(self.worker.ingest.lag().values())


def worker_port(worker: Any) -> WorkerPort:
    """The API's view of ``worker`` (an ``agents.worker.Worker``)."""
    return _WorkerAdapter(worker)


def check_exposure(settings: Settings) -> None:
    """Refuse (ConfigError) to serve on a non-loopback address without a token."""
    host = settings.worker.web_host
    if settings.worker.api_token is None and not _loopback(host):
        raise ConfigError("worker.api_token", f"worker.web_host is {host!r}, not a loopback "
                          "address: set RIVERBED_WORKER__API_TOKEN (16+ characters) so the "
                          "API asks for it, or bind to 127.0.0.1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Rate:
    """Events per second over the last few seconds of samples."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def __call__(self, events: int) -> float:
        now = time.monotonic()
        self.samples.append((now, events))
        while len(self.samples) > 2 and now - self.samples[1][0] >= 5.0:
            self.samples.popleft()
        then, before = self.samples[0]
        return (events - before) / (now - then) if now - then >= 0.2 else 0.0


class WebApi:
    """The API's routes on the aiohttp application of a Faust app."""

    def __init__(self, port: WorkerPort, app: Any) -> None:
        check_exposure(port.settings)
        self.port = port
        self.app = app
        s = port.settings
        self.token = s.worker.api_token
        schema = load_schema(s.event.schema, s.base_dir)
        self.form = EventForm(schema, s.event)
        #: the event schema's Avro codec: a request's events take the Kafka events' path
        self.codec = AvroCodec(schema)
        key = snapshot_key(s) if s.history.enabled else None
        self.feed = HistoryFeed(s.broker, s.topics.history, s.topics.metrics,
                                [m.name for m in s.models],
                                max_entries=s.worker.api_history_entries,
                                max_points=s.worker.api_series_points,
                                verify=snapshot_verifier(key) if key is not None else None,
                                record_key=record_key(s, key) if key is not None else None)
        self.rate = _Rate()
        self.static = {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*")
                       if p.is_file()}
        self.requests = 0

    # -- wiring ---------------------------------------------------------------------------
    def register(self) -> None:
        """Add the routes and the request guard to the Faust app's web server (before it
        starts). Faust's own index page at ``/`` gives way to ours."""
        web_app: web.Application = self.app.web.web_app
        web_app.middlewares.append(self._guard)
        blueprints = self.app.web.blueprints
        blueprints._enabled = [(prefix, bp) for prefix, bp in blueprints._enabled
                               if "production_index" not in str(bp)]
        router = web_app.router
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/", self.index), ("GET", "/static/{path:.+}", self.static_file),
            ("GET", "/healthz", self.healthz), ("GET", "/readyz", self.readyz),
            ("GET", "/openapi.json", self.openapi), ("GET", "/models", self.models),
            ("POST", "/models/{name}/predict", self.predict),
            ("GET", "/models/{name}/history", self.history),
            ("GET", "/models/{name}/metrics", self.metrics)]
        for method, path, handler in routes:
            router.add_route(method, path, handler)
        web_app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _: web.Application) -> None:
        await self.feed.close()

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Authentication, the body bound, and every failure answered as JSON."""
        self.requests += 1
        try:
            if self.token is not None and not self._open(request.path):
                self._authorize(request)
            length = request.content_length
            if length is not None and length > self.port.settings.worker.api_max_body_bytes:
                raise self._too_large()
            response = await handler(request)
        except ApiError as exc:
            response = self._error(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = self._error(ApiError(exc.status, exc.reason, field=None))
        except asyncio.CancelledError:
            raise
        except Exception:  # never into the worker: log it, answer 500
            log.exception("web API: %s %s failed", request.method, request.path)
            response = self._error(ApiError(500, "internal error (logged by the worker)"))
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _open(path: str) -> bool:
        return path in _OPEN or path.startswith("/static/")

    def _authorize(self, request: web.Request) -> None:
        assert self.token is not None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), self.token.encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                           field="Authorization")

    def _too_large(self) -> ApiError:
        limit = self.port.settings.worker.api_max_body_bytes
        return ApiError(413, f"the body exceeds {limit} bytes (worker.api_max_body_bytes)",
                        field="body")

    def _error(self, exc: ApiError) -> web.Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return web.json_response(exc.body(), status=exc.status, headers=headers)

    async def _body(self, request: web.Request) -> Any:
        if request.content_type != "application/json":
            raise ApiError(415, f"the body must be application/json, got "
                           f"{request.content_type!r}", field="Content-Type")
        limit, size, chunks = self.port.settings.worker.api_max_body_bytes, 0, []
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def _served(self, name: str) -> Served:
        for served in self.port.served():
            if served.model.name == name:
                return served
        names = [s.model.name for s in self.port.served()]
        raise ApiError(404, f"no model {name!r} on this worker (serving {names})",
                       field="name")

    # -- pages ----------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["path"])

    def _file(self, name: str) -> web.StreamResponse:
        path = self.static.get(name)  # only files that exist under static/: no traversal
        if path is None:
            raise ApiError(404, f"no file {name[:80]!r}", field="path")
        return web.Response(body=path.read_bytes(),
                            content_type=_TYPES.get(path.suffix, "application/octet-stream"))

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        stats = self.port.stats
        restored = stats.role in RESTORED_ROLES
        checks = {"broker_connected": stats.broker_connected, "models_restored": restored,
                  "role": stats.role, "consuming": stats.ready,
                  "models": [s.model.name for s in self.port.served()]}
        ready = stats.broker_connected and restored
        return web.json_response({"ready": ready, "checks": checks},
                                 status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        s, served = self.port.settings, self.port.served()
        w = s.worker
        rules = [m.extractor.label_rule for m in served]
        closed = {frozenset(r.allowed) for r in rules}
        labels = (sorted((v for _, v in next(iter(closed))), key=repr) if len(closed) == 1
                  and all(r.task != "regression" and not r.open for r in rules) else None)
        return web.json_response(openapi_document(
            self.form, [m.model.name for m in served], max_events=w.api_max_events,
            max_body_bytes=w.api_max_body_bytes, max_points=w.api_series_points,
            token_required=self.token is not None, max_abs_value=s.limits.max_abs_value,
            labels=labels, max_id_length=s.limits.max_event_id_length))

    async def models(self, request: web.Request) -> web.StreamResponse:
        stats = self.port.stats
        described = [self._describe(s, stats) for s in self.port.served()]
        return web.json_response({"models": described, "role": stats.role,
                                  "ready": stats.ready, "events_per_s": self.rate(stats.events),
                                  "lag": self.port.lag()})

    @staticmethod
    def _describe(served: Served, stats: WorkerStats) -> dict[str, Any]:
        model = served.model
        if stats.role == "standby":
            role = "standby"
        elif stats.role == "active" and not served.fenced:
            role = "learner"
        elif stats.role in ("learner", "replica"):  # scale_out "replicas": per model
            role = "learner" if model.name in stats.learning else "replica"
        else:
            role = "starting"
        monitor = served.monitor
        return {"name": model.name, "task": model.task, "seq": model.seq,
                "lineage": model.lineage, "epoch": served.epoch,
                "durable_seq": served.durable_seq, "role": role, "fenced": served.fenced,
                "partition": served.partition,
                "metrics": _finite(monitor.values()) if monitor else {},
                "version_metrics": _finite(monitor.version_values()) if monitor else {},
                "drifts": monitor.drifts if monitor else 0}

    async def predict(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._served(name)  # 404 before reading a body
        body = await self._body(request)
        w = self.port.settings.worker
        records = predict_events(body, self.form, w.api_max_events, int(time.time() * 1000))
        single = isinstance(body, dict)
        served = self._served(name)
        xs, ids = self._validated(records, served, single)
        try:
            async with asyncio.timeout(LOCK_WAIT_S):
                await self.port.model_lock.acquire()
        except TimeoutError:
            raise ApiError(503, "the model is busy (a takeover holds it); try again") from None
        try:  # no await in here: nothing interleaves with the predictions
            served = self._served(name)  # the same model object, or its successor
            model = served.model
            learned = self.form.required_numeric & frozenset(served.extractor.scalar_fields)
            made = predict_only(model, xs, learned)
            seq, lineage = model.seq, model.lineage
        except WouldLearn as exc:
            raise ApiError(503, str(exc)) from None
        finally:
            self.port.model_lock.release()
        return web.json_response({
            "model": name, "model_seq": seq, "lineage": lineage, "untrained": seq == 0,
            "predictions": [{"event_id": event_id, "prediction": json_safe(prediction),
                             "probabilities": _finite({str(k): v for k, v in proba.items()})}
                            for event_id, (prediction, proba) in zip(ids, made, strict=True)]})

    def _validated(self, records: list[dict[str, Any]], served: Served, single: bool
                   ) -> tuple[list[dict[str, float]], list[str]]:
        """Each record through the Kafka events' path: Avro encode + decode (the schema
        check), the event id, the model's feature extractor and label rule (a copy of
        it: checking must not make a multiclass model's rule learn a new class)."""
        ev = self.port.settings.event
        max_id_length = self.port.settings.limits.max_event_id_length
        xs, ids, errors = [], [], []
        rule = copy.copy(served.extractor.label_rule)
        rule.allowed = set(rule.allowed)
        for number, record in enumerate(records):
            where = "event" if single else f"events[{number}]"
            try:
                try:
                    event = self.codec.decode(self.codec.encode(record))
                except Exception as exc:  # noqa: BLE001 - anything the codec refuses
                    raise EventError(f"the Avro codec refused it: {exc}",
                                     reason="decode_error") from None
                try:
                    check_event_id(event[ev.id_field], max_id_length)
                except EventError as exc:
                    exc.field = ev.id_field
                    raise
                x = served.extractor.extract(event)
                label = event.get(ev.label_field)
                if label is not None:
                    try:
                        rule.check(label)
                    except EventError as exc:
                        exc.field = ev.label_field
                        raise
            except EventError as exc:
                field = f"{where}.{exc.field}" if exc.field else where
                errors.append({"field": field, "reason": exc.reason, "error": str(exc)})
                continue
            xs.append(x)
            ids.append(str(event[ev.id_field]))
        if errors:
            first = errors[0]
            raise ApiError(422, f"{first['field']}: {first['error']}", field=first["field"],
                           reason=first["reason"], errors=errors[:20])
        return xs, ids

    async def history(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._served(name)
        query = history_query(request.query)
        complete = await self.feed.refresh()
        summary = self.feed.summaries.get(name)
        series = self.feed.series.get(name)
        entries: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        next_after: int | None = None
        dropped = 0
        if summary is not None:
            entries, next_after = summary.page(query.from_seq, query.lineage, query.after,
                                               query.limit)
            versions = summary.version_list(series.by_lineage if series else {})
            dropped = summary.dropped
        return web.json_response({"model": name, "entries": entries, "versions": versions,
                                  "next_after": next_after, "dropped": dropped,
                                  "complete": complete})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._served(name)
        since, limit = series_query(request.query, self.port.settings.worker.api_series_points)
        await self.feed.refresh()
        series = self.feed.series.get(name)
        return web.json_response({"model": name,
                                  "points": series.since(since, limit) if series else []})


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)}
