"""Fuzzing a running worker: arbitrary bytes and schema-valid hostile records on the events
and labels topics, with an oracle of what must come out.

Used by ``tests/integration/test_fuzz.py`` (a few examples, seconds) and ``tests/fuzz_long.py``
(a long run that prints records tried and crashes). The oracle decides each record's fate
with the same public pieces a user would (the Avro codec, the feature extractor and the
model's label rule): a dead letter, a prediction, a learn step, a held label or a
duplicate. After every example the broker's topics must agree with it exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.deadletter import parse_headers
from riverbed.streams.errors import EventError
from riverbed.streams.features import FeatureExtractor
from riverbed.streams.history import examples_of, fold
from riverbed.streams.models import OnlineModel
from riverbed.streams.replay import read_model_history
from riverbed.streams.tail import collect

EVENT_SCHEMA = load_schema("agrawal_event")
LABEL_SCHEMA = load_schema("label")
INT32 = st.integers(-(2**31), 2**31 - 1)
LONG = st.integers(-(2**63), 2**63 - 1)
HOSTILE_DOUBLE = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                           st.sampled_from([1e300, -1e300, 5e-324, -0.0, 2.0**63]))
KEYS = st.one_of(st.none(), st.binary(max_size=64), st.just(b"\xff" * 20_000),
                 st.text(max_size=20).map(str.encode))


def event_values(event_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """Schema-valid agrawal events: two in three sane, the others with hostile values."""
    def fields(double: Any, int_: Any, label: Any, ids: Any) -> Any:
        return st.fixed_dictionaries({
            "event_id": ids, "key": st.text(max_size=30), "timestamp": LONG,
            "salary": double(150_000), "commission": double(75_000), "age": int_(80),
            "elevel": int_(4), "car": int_(20), "zipcode": int_(8), "hvalue": double(900_000),
            "hyears": int_(30), "loan": double(500_000), "label": label})

    sane = fields(lambda m: st.floats(0, m), lambda m: st.integers(0, m),
                  st.sampled_from([None, 0, 1]), st.just(event_id))
    hostile = fields(lambda m: st.one_of(st.floats(0, m), HOSTILE_DOUBLE),
                     lambda m: st.one_of(st.integers(0, m), INT32),
                     st.one_of(st.none(), st.sampled_from([0, 1]), INT32),
                     st.sampled_from([event_id, "", event_id.ljust(300, "x")]))
    return st.one_of(sane, sane, hostile)


@dataclasses.dataclass
class Oracle:
    """What the worker must have done, record by record (one binary model)."""

    settings: Settings
    valid_events: list[str] = dataclasses.field(default_factory=list)
    learned: set[str] = dataclasses.field(default_factory=set)
    pending: set[str] = dataclasses.field(default_factory=set)
    dead_letters: int = 0
    records: int = 0
    #: per sent record: (topic, value, True if it must become a dead letter)
    fates: list[tuple[str, bytes | None, bool]] = dataclasses.field(default_factory=list)
    #: exceptions other than EventError seen while deciding (the worker's internal_error)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    #: (topic, partition, offset) -> index in ``fates``, once sent
    where: dict[tuple[str, int, int], int] = dataclasses.field(default_factory=dict)
    #: indices in ``fates`` of the records sent (acknowledged by the broker)
    sent: set[int] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        spec = self.settings.models[0]
        model = OnlineModel(spec)
        self.events = AvroCodec(EVENT_SCHEMA)
        self.labels = AvroCodec(LABEL_SCHEMA)
        self.extractor = FeatureExtractor(EVENT_SCHEMA, self.settings.event, spec,
                                          self.settings.limits, binary=model.is_binary)

    def checkpoint(self) -> tuple[Any, ...]:
        """The decisions so far (see :meth:`rollback`)."""
        return (list(self.valid_events), set(self.learned), set(self.pending),
                self.dead_letters, self.records, len(self.fates))

    def rollback(self, saved: tuple[Any, ...]) -> None:
        """Forget the decisions of an example Hypothesis abandoned while drawing it (an
        overrun): its records were never sent."""
        valid, learned, pending, self.dead_letters, self.records, fates = saved
        self.valid_events, self.learned, self.pending = valid, learned, pending
        del self.fates[fates:]

    def _dead(self, exc: Exception) -> None:
        self.dead_letters += 1
        if not isinstance(exc, EventError):
            self.unexpected.append(f"{type(exc).__name__}: {exc}")

    def event(self, value: bytes | None) -> None:
        self._decide("events", self._event, value)

    def label(self, value: bytes | None) -> None:
        self._decide("labels", self._label, value)

    def _decide(self, topic: str, decide: Any, value: bytes | None) -> None:
        """Decide one record's fate and remember it (with its bytes, for a diff)."""
        self.records += 1
        dead = self.dead_letters
        try:
            decide(value)
        finally:
            self.fates.append((topic, value, self.dead_letters > dead))

    def _check_id(self, event_id: str) -> None:
        if not event_id or len(event_id) > self.settings.limits.max_event_id_length:
            raise EventError("id")

    def _event(self, value: bytes | None) -> None:
        try:
            if value is None or len(value) > self.settings.limits.max_event_bytes:
                raise EventError("size")
            event = self.events.decode(value)
            self._check_id(event["event_id"])
            self.extractor.extract(event)
            label = event["label"]
            if label is not None:
                self.extractor.label_rule.check(label)
        except Exception as exc:  # the worker dead-letters whatever raises (internal_error)
            self._dead(exc)
            return
        self.valid_events.append(event["event_id"])
        (self.learned if label is not None else self.pending).add(event["event_id"])

    def _label(self, value: bytes | None) -> None:
        try:
            label = self.labels.decode(value or b"")
            self._check_id(label["event_id"])
            self.extractor.label_rule.check(label["label"])
        except Exception as exc:
            self._dead(exc)
            return
        if label["event_id"] in self.pending:  # else: a duplicate, or held (unknown id)
            self.pending.discard(label["event_id"])
            self.learned.add(label["event_id"])


def _raw_or(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes | None]:
    return st.one_of(valid, valid, valid, valid, valid, valid, st.binary(max_size=120),
                     st.none())


async def _send(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]],
                oracle: Oracle, first: int) -> None:
    """Send in order (``first``: the index of the first in ``oracle.fates``); remember
    where each record landed (for a diff on failure)."""
    from riverbed.streams.output import BatchProducer

    producer = BatchProducer(settings.broker)
    await producer.start()
    try:
        futures = [await producer.producer.send(topic, value=v, key=k)  # type: ignore[union-attr]
                   for k, v in records]
        for i, future in enumerate(futures):
            sent = await future
            oracle.where[(topic, sent.partition, sent.offset)] = first + i
        oracle.sent.update(range(first, first + len(records)))
    finally:
        await producer.stop()


async def explain(settings: Settings, oracle: Oracle) -> str:
    """Which records the oracle and the dead-letter topic disagree on, matched by their
    bytes (a dead letter carries the original value) per source topic."""
    dead = await collect(settings, settings.topics.dead_letters, 1, oracle.dead_letters,
                         timeout_s=10, settle_s=1.0)
    lettered = Counter((parse_headers(r.headers).get("source_topic", "").rsplit(".", 1)[-1],
                        r.value) for r in dead)
    expected = Counter((topic, value) for i, (topic, value, must) in enumerate(oracle.fates)
                       if must and i in oracle.sent)
    lines = [f"oracle: dead, worker: not ({n}x) {topic} {value!r}"
             for (topic, value), n in (expected - lettered).items()]
    lines += [f"worker: dead, oracle: not ({n}x) {topic} {value!r}"
              for (topic, value), n in (lettered - expected).items()]
    lines.append(f"dead letters read {len(dead)}, expected {sum(expected.values())}, "
                 f"fates {len(oracle.fates)}, sent {len(oracle.sent)}, oracle count at "
                 f"failure {oracle.dead_letters}")
    return "\n".join(lines[:20])


class TopicCounter:
    """Counts a topic's records incrementally with one long-lived consumer (re-reading a
    topic full of 20 KB keys from the start on every check was slower than the worker)."""

    def __init__(self, settings: Settings, topic: str, partitions: int) -> None:
        self.settings, self.topic, self.partitions = settings, topic, partitions
        self.count = 0
        self._reader: Any = None

    async def read(self) -> int:
        """Read what has arrived since the last call; the total so far."""
        from aiokafka import TopicPartition

        from riverbed.streams.kafka_clients import PartitionReader

        if self._reader is None:
            self._reader = PartitionReader(
                self.settings.broker,
                [TopicPartition(self.topic, p) for p in range(self.partitions)],
                fetch_max_wait_ms=50, max_partition_fetch_bytes=16 * 1024 * 1024)
            await self._reader.__aenter__()
        fetched = await self._reader.fetch(200)
        self.count += sum(len(records) for records in fetched.values())
        return self.count

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.__aexit__(None, None, None)


async def _settled(oracle: Oracle, counters: tuple[TopicCounter, TopicCounter], alive: Any,
                   timeout_s: float, expected: tuple[int, int]) -> None:
    """Wait until ``expected`` (predictions, dead letters) are all there."""
    want_predictions, want_dead = expected
    deadline = time.monotonic() + timeout_s
    predictions = dead = 0
    while time.monotonic() < deadline:
        assert alive(), "the worker died"
        predictions, dead = await counters[0].read(), await counters[1].read()
        if predictions >= want_predictions and dead >= want_dead:
            return
    late = time.monotonic()
    while time.monotonic() < late + 120 and (await counters[1].read() < want_dead
                                             or await counters[0].read() < want_predictions):
        pass
    raise AssertionError(f"predictions {predictions}/{want_predictions}, dead letters "
                         f"{dead}/{want_dead} before the deadline; "
                         f"{counters[0].count} and {counters[1].count} "
                         f"{time.monotonic() - late:.0f}s later")


def fuzz(settings_: Settings, oracle: Oracle, alive: Any, examples: int) -> None:
    """Run ``examples`` Hypothesis examples against the worker (no shrinking: the worker is
    stateful, so every example adds to what it must have done)."""
    counter = iter(range(10**9))
    failures: list[Exception] = []  # raised after Hypothesis: a stateful worker cannot
    # replay an example, so Hypothesis must not try to reproduce a failure

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_example(data: st.DataObject) -> None:
        saved = oracle.checkpoint()
        try:
            _one_example(data)
        except Exception as exc:  # kept for after Hypothesis, which must not replay it
            failures.append(exc)
        except BaseException:  # Hypothesis stopped drawing (overrun): nothing was sent
            oracle.rollback(saved)
            raise

    loop = asyncio.new_event_loop()  # one loop: the counters' consumers live across examples
    counters = (TopicCounter(settings_, settings_.topics.predictions, settings_.topics.partitions),
                TopicCounter(settings_, settings_.topics.dead_letters, 1))

    def io(coroutine: Any) -> None:
        """Run a send or a check; after a failure only draw (the draws must not depend on
        the outcome, or Hypothesis calls the strategy flaky)."""
        if failures:
            coroutine.close()
            return
        loop.run_until_complete(coroutine)

    def _one_example(data: st.DataObject) -> None:
        """Draw the whole example first (events, then labels for the events the oracle says
        are pending), then send and check: a failing check must not change the draws."""
        round_ = next(counter)
        events: list[tuple[bytes | None, bytes | None]] = []
        for i in range(data.draw(st.integers(5, 40))):
            valid = event_values(f"fz{round_}-{i}").map(oracle.events.encode)
            value = data.draw(_raw_or(valid))
            oracle.event(value)
            events.append((data.draw(KEYS) if value is not None else b"tomb", value))
        targets = sorted(oracle.pending) + sorted(oracle.learned)[:3] + ["ghost", "", "g" * 300]
        labels: list[tuple[bytes | None, bytes | None]] = []
        events_expected = (len(oracle.valid_events), oracle.dead_letters)
        for _ in range(data.draw(st.integers(0, 30))):
            valid = st.fixed_dictionaries({  # an index: the draws never depend on state
                "event_id": st.integers(0, 10**6).map(lambda i: targets[i % len(targets)]),
                "label": st.one_of(st.sampled_from([0, 1]), st.sampled_from([0, 1]),
                                   st.sampled_from([0, 1]), st.booleans(), LONG,
                                   HOSTILE_DOUBLE, st.text(max_size=10)),
                "time": LONG}).map(oracle.labels.encode)
            value = data.draw(_raw_or(valid))
            oracle.label(value)
            labels.append((data.draw(KEYS) if value is not None else b"tomb", value))
        first_label = len(oracle.fates) - len(labels)
        io(_send(settings_, settings_.topics.events, events, oracle, first_label - len(events)))
        io(_settled(oracle, counters, alive, 60, events_expected))  # labels after events
        io(_send(settings_, settings_.topics.labels, labels, oracle, first_label))
        io(_settled(oracle, counters, alive, 60,
                    (len(oracle.valid_events), oracle.dead_letters)))

    try:
        one_example()
    finally:
        for counter_ in counters:
            loop.run_until_complete(counter_.stop())
        loop.close()
    if failures:
        raise failures[0]


async def check_outcome(settings: Settings, oracle: Oracle, alive: Any,
                        env: dict[str, str]) -> None:
    """After fuzzing: every valid event predicted once, learned steps == distinct valid
    labelled ids, every bad record a dead letter, the history verifies."""
    name = settings.models[0].name
    deadline = time.monotonic() + 60
    while True:  # the last batches' history records land after their outputs
        _, effects = fold(name, await read_model_history(settings, name))
        learned = [x.event_id for x in examples_of(effects)]
        if len(learned) >= len(oracle.learned) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert alive(), "the worker died"
    assert sorted(learned) == sorted(oracle.learned)  # each once, nothing else
    predictions = await collect(settings, settings.topics.predictions,
                                settings.topics.partitions, len(oracle.valid_events),
                                settle_s=0.5)
    codec = AvroCodec(load_schema("prediction"))
    made = Counter(codec.decode(r.value)["event_id"] for r in predictions)
    assert made == Counter(oracle.valid_events)
    dead = await collect(settings, settings.topics.dead_letters, 1, oracle.dead_letters,
                         settle_s=0.5)
    assert len(dead) == oracle.dead_letters
    verify = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "riverbed.cli", "replay", name, "--verify", "--json"],
        env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
