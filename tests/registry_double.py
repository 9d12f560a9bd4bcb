"""A schema-registry double for the tests: the Confluent REST API riverbed uses, served by
aiohttp on 127.0.0.1 (a free port) in the test's own event loop.

* ``GET /schemas/ids/{id}``: ``{"schema": "<text>"}``, or 404 ``{"error_code": 40403}``.
* ``POST /subjects/{subject}/versions`` with ``{"schema": "<text>"}``: ``{"id": N}``; the
  same schema gets the same id in every subject (as Confluent's registry does); a body
  that is not a JSON schema gets 422 ``{"error_code": 42201}``; a content type other
  than the registry's (or plain JSON) gets 415.
* Basic auth when ``username``/``password`` are given (401 ``{"error_code": 40101}``).
* TLS with an ``ssl.SSLContext`` (tests/certs.py makes the certificates).
* Outages on demand: :meth:`fail` answers ``500``, ``hang`` (no answer until healed),
  ``close`` (the connection is dropped without an answer), for the next N requests or
  until :meth:`heal`; :meth:`go_down` stops listening (connection refused) until
  :meth:`come_back` listens again on the same port.

Every request is recorded (method, path, status or the fault, Authorization header).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Self

from aiohttp import web

from riverbed.streams.broker import free_port

Fault = Literal["500", "hang", "close"]
_TYPES = ("application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json",
          "application/json")


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request the double received."""

    method: str
    path: str
    outcome: str  # the status answered, or the fault
    authorization: str | None
    content_type: str | None


class RegistryDouble:
    """See the module docstring. ``async with RegistryDouble() as registry: registry.url``."""

    def __init__(self, *, username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.tls = tls
        self._auth = None if username is None else "Basic " + base64.b64encode(
            f"{username}:{password}".encode()).decode()
        self.schemas: dict[int, str] = {}
        self.seen: list[Seen] = []
        #: subjects whose registrations are refused with 409 (incompatible)
        self.incompatible_subjects: set[str] = set()
        self._fault: Fault | None = None
        self._fault_left: int | None = None
        self._healed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.come_back()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.heal()
        await self.go_down()

    # -- the registry's content ------------------------------------------------------

    def add(self, schema: Mapping[str, Any], schema_id: int | None = None) -> int:
        """Register ``schema`` directly (optionally under a chosen id); returns its id."""
        text = json.dumps(schema, sort_keys=True)
        for known, stored in self.schemas.items():
            if stored == text and schema_id in (None, known):
                return known
        new_id = schema_id if schema_id is not None else max(self.schemas, default=0) + 1
        self.schemas[new_id] = text
        return new_id

    # -- faults ----------------------------------------------------------------------

    def fail(self, fault: Fault, times: int | None = None) -> None:
        """Answer the next ``times`` requests (all, if None, until :meth:`heal`) with ``fault``."""
        self._fault, self._fault_left = fault, times
        self._healed.clear()

    def heal(self) -> None:
        """Answer normally again (hung requests are released with a 500)."""
        self._fault, self._fault_left = None, None
        self._healed.set()

    async def go_down(self) -> None:
        """Stop listening and drop every connection (clients get 'connection refused')."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def come_back(self) -> None:
        """Listen again, on the same port."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/schemas/ids/{id}", self._get_schema)
        app.router.add_post("/subjects/{subject}/versions", self._register)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls,
                           reuse_address=True)
        await site.start()

    def count(self, outcome: str | None = None, method: str | None = None) -> int:
        """Requests seen (with this outcome / method)."""
        return sum(1 for s in self.seen if outcome in (None, s.outcome)
                   and method in (None, s.method))

    # -- HTTP ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        def record(outcome: str) -> None:
            self.seen.append(Seen(request.method, request.path, outcome,
                                  request.headers.get("Authorization"),
                                  request.headers.get("Content-Type")))

        fault = self._fault
        if fault is not None:
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self.heal()
            record(fault)
            if fault == "hang":
                await self._healed.wait()
                raise web.HTTPInternalServerError()
            if fault == "close":
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError  # nothing can be answered on a dropped connection
            return _error(500, 50001, "Error in the backend data store")
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            record("401")
            return _error(401, 40101, "Unauthorized")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # e.g. no such route: aiohttp's plain-text 404
            record(str(exc.status))
            raise
        record(str(response.status))
        return response

    async def _get_schema(self, request: web.Request) -> web.StreamResponse:
        schema_id = int(request.match_info["id"])
        if schema_id not in self.schemas:
            return _error(404, 40403, f"Schema {schema_id} not found")
        return _json(200, {"schema": self.schemas[schema_id]})

    async def _register(self, request: web.Request) -> web.StreamResponse:
        if request.content_type not in _TYPES:
            return _error(415, 415, f"unsupported content type {request.content_type}")
        try:
            schema = json.loads((await request.json())["schema"])
        except (ValueError, KeyError, TypeError):
            return _error(422, 42201, "Either the input schema or one its references is invalid")
        if request.match_info["subject"] in self.incompatible_subjects:
            return _error(409, 409, "Schema being registered is incompatible with an earlier "
                          "schema for subject")
        return _json(200, {"id": self.add(schema)})


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/vnd.schemaregistry.v1+json")


def _error(status: int, code: int, message: str) -> web.Response:
    return _json(status, {"error_code": code, "message": message})
