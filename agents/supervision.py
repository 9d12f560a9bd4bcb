"""Keeping a worker honest about its own health: supervised background tasks, and the
broker watch.

* :class:`Supervisor` runs background tasks that cannot die silently. A task that ends with
  an exception stops the worker: a bug (any other exception) with its traceback through
  ``crash``; a :class:`~riverbed.streams.errors.RiverbedError` -- a condition with a message,
  such as the broker staying away -- by resolving :attr:`Supervisor.fatal`, which
  ``Worker.run`` turns into one log line and exit code 1.
* :class:`BrokerWatch` probes the bootstrap servers every second, connecting as the clients
  do (TLS, SASL; ``streams/probe.py``). A refusal of the connection's security (wrong
  password, untrusted certificate) stops the worker at once with one line. While none
  answers, the worker is not ready, ``riverbed_broker_connected`` is 0, client libraries'
  log lines are dropped (:class:`~riverbed.agents.runtime.ClientLogLimiter`) and
  one summary line per 5 s is logged; past ``broker.reconnect_timeout_s`` it raises
  :class:`~riverbed.streams.errors.BrokerUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from riverbed.agents.runtime import ClientLogLimiter
from riverbed.streams.config import Settings
from riverbed.streams.errors import (
    BrokerError,
    BrokerSecurityError,
    BrokerUnavailableError,
    RiverbedError,
)
from riverbed.streams.probe import probe
from riverbed.streams.telemetry import WorkerStats

log = logging.getLogger(__name__)

#: how long :meth:`Supervisor.cancel_all` waits for a cancelled task before cancelling it
#: again: long enough for the clean-up a cancel starts (a consumer's stop in a ``finally``)
#: to finish uninterrupted, short enough that a swallowed cancel costs a stop seconds
RECANCEL_S = 5.0


class Supervisor:
    """Background tasks of one worker; none may end with an unnoticed exception."""

    def __init__(self, crash: Callable[[BaseException], Awaitable[None]]) -> None:
        #: how a bug stops the worker (the Faust app's crash)
        self.crash = crash
        #: resolved with the first RiverbedError a task ends with (set by Worker.run)
        self.fatal: asyncio.Future[RiverbedError] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._crashing: list[asyncio.Future[None]] = []

    def run(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start ``coro`` as a supervised task."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(lambda done: self._ended(done, name))
        self._tasks.append(task)
        return task

    def _ended(self, done: asyncio.Task[None], name: str) -> None:
        if done.cancelled() or done.exception() is None:
            return
        exc = done.exception()
        if isinstance(exc, RiverbedError) and self.fatal is not None:
            if not self.fatal.done():  # a condition with its own message: one line
                self.fatal.set_result(exc)
            else:  # the worker is stopping already, for the first such condition
                log.info("also: %s", exc)
            return
        log.error("background task %r failed; stopping the worker", name, exc_info=exc)
        self._crashing.append(asyncio.ensure_future(self.crash(exc)))  # type: ignore[arg-type]

    async def stop(self, exc: BaseException) -> None:
        """Stop the worker because of ``exc``: one line for a RiverbedError (when
        ``Worker.run`` waits on :attr:`fatal`), the crash with its traceback otherwise."""
        if isinstance(exc, RiverbedError) and self.fatal is not None:
            if not self.fatal.done():
                self.fatal.set_result(exc)
            else:  # the worker is stopping already, for the first such condition
                log.info("also: %s", exc)
            return
        await self.crash(exc)

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them to end, cancelling again every
        :data:`RECANCEL_S` a task that is still running: a cancel can be swallowed --
        Python 3.11's ``asyncio.wait_for`` returns its result instead when the awaitable
        completes in the same loop turn as the cancel -- and a task that swallowed it
        goes on with its loop (a worker's stop hung on its broker watch that way, with an
        idle event loop, in CI). A task started meanwhile (a clean-up may start one) is
        cancelled when its turn comes."""
        cancelled = set(self._tasks)
        for task in cancelled:
            task.cancel()
        for task in self._tasks:  # including any started while we wait
            if task not in cancelled:
                cancelled.add(task)
                task.cancel()
            while not task.done():
                await asyncio.wait([task], timeout=RECANCEL_S)
                if not task.done():
                    log.info("background task %r still running %gs after a cancel; "
                             "cancelling again", task.get_name(), RECANCEL_S)
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()


class BrokerWatch:
    """Watches the bootstrap servers; see the module docstring. Delivery: nothing is lost
    while the broker is away -- outputs and history appends wait in the producer (its
    timeout is ``reconnect_timeout_s + 10``) and nothing is committed."""

    def __init__(self, settings: Settings, stats: WorkerStats, limiter: ClientLogLimiter,
                 is_assigned: Callable[[], bool]) -> None:
        self.broker = settings.broker
        self.bootstrap = settings.broker.bootstrap_servers
        self.timeout_s = settings.broker.reconnect_timeout_s
        self.stats = stats
        self.limiter = limiter
        #: whether the worker consumes its inputs (ready again once the broker is back)
        self.is_assigned = is_assigned

    async def run(self) -> None:
        """Probe every second until the broker stays away too long (then raise)."""
        away_since: float | None = None
        said = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await probe(self.broker, 2.0)
                problem = None
            except BrokerSecurityError:
                raise  # retrying cannot help: the worker stops with this one line
            except BrokerError as exc:
                problem = str(exc)
            now = time.monotonic()
            if problem is None:
                if away_since is not None:
                    log.warning("broker %s reachable again after %.0fs; resuming",
                                self.bootstrap, now - away_since)
                    away_since = None
                    self._connected(True)
                continue
            if away_since is None:
                away_since, said = now, 0.0
                self._connected(False)
            if now - said >= 5.0:
                said = now
                log.warning("broker unreachable for %.0fs (%s); waiting up to "
                            "broker.reconnect_timeout_s=%gs (%d client log lines suppressed)",
                            now - away_since, problem, self.timeout_s, self.limiter.suppressed)
            if now - away_since > self.timeout_s:
                raise BrokerUnavailableError(
                    f"broker {self.bootstrap} unreachable for more than {self.timeout_s:g}s "
                    "(broker.reconnect_timeout_s); stopping")

    def _connected(self, connected: bool) -> None:
        self.limiter.away = not connected
        self.stats.broker_connected = connected
        self.stats.ready = connected and self.is_assigned()
