"""Stopping a worker's background tasks when one of them swallows a cancel.

Python 3.11's ``asyncio.wait_for`` returns its awaitable's result instead of raising
``CancelledError`` when the cancel lands in the loop turn in which that awaitable
completed; a loop around it (the broker watch probes the broker every second) then goes
on as if nothing happened. Fresh-clone CI runs saw ``Worker.stop`` hang on exactly that,
with an idle event loop, until the test's deadline.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from riverbed.agents import supervision
from riverbed.agents.supervision import Supervisor

ROOT = Path(__file__).resolve().parents[2]


async def _no_crash(exc: BaseException) -> None:
    raise AssertionError(f"no task should crash: {exc!r}")


async def test_a_task_that_swallows_a_cancel_is_cancelled_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "RECANCEL_S", 0.5)
    swallowed = asyncio.Event()

    async def probes_forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # as wait_for does when it races a completion
            swallowed.set()
        while True:  # and goes on with its loop
            await asyncio.sleep(0.1)

    supervisor = Supervisor(_no_crash)
    task = supervisor.run(probes_forever(), "broker watch")
    await asyncio.sleep(0)  # it is in its sleep
    async with asyncio.timeout(10) as deadline:  # the old cancel_all waited for it forever
        await supervisor.cancel_all()
    assert not deadline.expired()
    assert swallowed.is_set() and task.cancelled()


async def test_cancel_all_ends_tasks_that_failed_or_finished_too() -> None:
    async def fails() -> None:
        raise ValueError("a bug")

    async def finishes() -> None:
        return None

    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    supervisor = Supervisor(crash)
    tasks = [supervisor.run(fails(), "fails"), supervisor.run(finishes(), "finishes")]
    await asyncio.wait(tasks)
    async with asyncio.timeout(10):
        await supervisor.cancel_all()
    await asyncio.sleep(0)  # the crash callback's task
    assert [type(e) for e in crashes] == [ValueError]


async def test_a_clean_up_within_the_grace_is_not_cut_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel starts a task's clean-up (a consumer's stop in a ``finally``): it runs to
    its end when it takes less than RECANCEL_S, and a task that clean-up starts is
    cancelled too -- at once: with an hour's grace, waiting it out would hit the deadline."""
    monkeypatch.setattr(supervision, "RECANCEL_S", 3600.0)
    supervisor = Supervisor(_no_crash)
    cleaned = asyncio.Event()
    started: list[asyncio.Task[None]] = []

    async def restarts_forever() -> None:
        await asyncio.sleep(3600)

    async def cleans_up_slowly() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.3)  # would not survive a second cancel
            cleaned.set()
            started.append(supervisor.run(restarts_forever(), "started in a clean-up"))

    task = supervisor.run(cleans_up_slowly(), "reader")
    await asyncio.sleep(0)
    async with asyncio.timeout(10) as deadline:
        await supervisor.cancel_all()
    assert not deadline.expired() and cleaned.is_set() and task.cancelled()
    assert [t.cancelled() for t in started] == [True]


def test_no_code_awaits_through_asyncio_wait_for() -> None:
    """The library code uses ``asyncio.timeout`` (which passes a cancel on) instead."""
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("agents", "streams", "riverbed")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bwait_for\(", line)]
    assert found == []
