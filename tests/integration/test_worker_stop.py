"""A worker asked to stop exits even when its stop cannot finish.

A clean stop flushes outputs and commits; if the broker never answers, that could wait
forever (once seen in a benchmark: a worker that had learned its whole backlog sat in its
stop with an idle event loop). It is bounded: after ``STOP_TIMEOUT_S`` the worker logs
what every task was waiting for and exits; nothing is lost, because what was not
committed is processed again -- and learned once -- by the next owner.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import riverbed.agents.worker as worker_module
from riverbed.agents.worker import Worker
from riverbed.streams.broker import free_port
from riverbed.streams.config import Settings
from tests.helpers import provision, until


async def test_a_stop_that_cannot_finish_is_given_up_with_what_it_waited_for(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    await provision(settings)
    monkeypatch.setattr(worker_module, "STOP_TIMEOUT_S", 1.0)
    worker = Worker(settings, web_port=free_port())
    real_stop = worker.stop
    never = asyncio.Event()

    async def stop_that_never_finishes() -> None:
        await never.wait()

    worker.stop = stop_that_never_finishes  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        await until(lambda: worker.stats.ready or running.done(), 60)
        assert not running.done(), running.result()
        caplog.set_level(logging.WARNING, logger="riverbed")
        stop.set()
        assert await asyncio.wait_for(running, 30) == 0  # before: waited forever
        assert "stop did not finish within 1s; exiting anyway" in caplog.text
        assert "stop_that_never_finishes" in caplog.text  # the await chain it was stuck in
    finally:
        running.cancel()
        await real_stop()
