"""Consumer lag after a restart: a worker that resumes at the end of its inputs reports no
lag, before any new record arrives (it used to report the whole topic as lag)."""

from __future__ import annotations

import pytest

from riverbed.streams.config import Settings
from riverbed.streams.produce import produce
from tests.helpers import provision, running_worker, until

pytestmark = pytest.mark.integration


async def test_a_restarted_worker_reports_no_lag_before_new_records(settings: Settings) -> None:
    await provision(settings)
    async with running_worker(settings) as worker:
        report = await produce(settings, "agrawal", 800, seed=4)
        learner = worker.learners[0]  # type: ignore[index]
        await until(lambda: learner.durable_seq >= report.valid, 60)
    async with running_worker(settings) as restarted:
        ingest = restarted.ingest
        consumer = ingest.consumer
        assert consumer is not None

        def fetched_once() -> bool:  # every partition assigned, its high-water mark known
            tps = consumer.assignment()
            return len(tps) == settings.topics.partitions * 2 and all(
                consumer.highwater(tp) is not None for tp in tps)

        await until(fetched_once, 30)
        events = [tp for tp in consumer.assignment() if tp.topic == settings.topics.events]
        assert sum(consumer.highwater(tp) for tp in events) == report.sent  # a full topic
        assert all(ingest.offsets.position(tp) is None for tp in events)  # nothing new
        lags = restarted.reporter.lag()
        assert set(lags) == consumer.assignment() and sum(lags.values()) == 0, lags
        assert restarted.reporter.report(restarted.models[0])["consumer_lag"] == 0
