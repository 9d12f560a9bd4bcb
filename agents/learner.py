"""The learner: single writer of one model's history, co-located with the inference agent.

Delivery guarantee: **exactly-once learning effect** per model, on any Kafka-compatible
broker, without transactions. Events are consumed at-least-once; the learner skips every
event at an input offset the history already covers, and every ``event_id`` in the
applied-id window rebuilt from the history. The batch protocol (run by the worker for
every micro-batch, in batch order) is:

  1. Predict then learn in memory; build the ``Learned`` record (seq range, input offsets
     after the batch, examples, fingerprint) and fold it into our own state.
  2. Publish predictions and dead letters; wait for the broker's acks.
  3. Append ``Learned`` (and, on cadence, snapshot chunks) to ``riverbed.history``; wait.
  4. Only now mark the input batch done, so its offsets may be committed.

Why this order: the history is the record of what was learned, so it must be written
before offsets are committed (4 after 3) -- otherwise a crash between them would lose
learn steps. Outputs go first (2 before 3) so that an event covered by the history
always has its prediction on the broker; on restart such an event is skipped entirely.
A crash after 2 and before 3 re-delivers the batch: predictions repeat (at-least-once)
but the learning, not in the history, happens exactly once.

Takeover (``takeover``): read the newest snapshot from the index, fold the history tail
to the high-water mark, append ``Claimed{epoch+1}``, then fold on up to *our own Claimed
record* (a concurrent claimer with a higher epoch would fence us, so we claim again).
Only then does the learner learn. A learner fenced by a newer epoch keeps writing into
the void: the fold ignores its records and counts them. Input offsets it committed
meanwhile are not trusted: after every rebalance the worker seeks each input partition to
the position its models' folds cover (``Worker.before_batch``), so the events whose
records were ignored are learned by whoever owns the model next.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from riverbed.streams.effects import ExampleCheck, apply_effects
from riverbed.streams.history import (
    Annotated,
    Body,
    Claimed,
    Created,
    Example,
    Examples,
    HistoryEvent,
    HistoryFold,
    Learn,
    Learned,
    Load,
    Restored,
    Snapshot,
    SnapshotChunk,
)
from riverbed.streams.history_log import HistoryLog, SkippedRecord, SnapshotIndex
from riverbed.streams.models import OnlineModel, build_estimator
from riverbed.streams.snapshots import (
    fingerprint,
    index_entry_ok,
    load_snapshot,
    make_chunks,
    sign_index_entry,
    snapshot_verifier,
)

log = logging.getLogger(__name__)


def spec_json(model: OnlineModel) -> str:
    """Canonical JSON of a model spec (for Created and its hash)."""
    spec = model.spec
    return json.dumps({"name": spec.name, "task": spec.task, "seed": spec.seed,
                       "pipeline": list(spec.pipeline), "features": spec.features},
                      sort_keys=True, default=list)


#: Owner name of rollback claims (the CLI); see Worker._follow_history.
ROLLBACK_OWNER = "riverbed-rollback"
#: Learn steps folded into the model between yields to the event loop while a history is
#: restored or followed (a tail of 100,000 steps in one go blocked a worker for seconds)
FOLD_STEPS = 4096


def valid_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Snapshot index entries not written by a fenced learner.

    Every takeover publishes an epoch marker; a snapshot entry whose epoch is below a
    marker published before it comes from a zombie and is skipped. (A zombie snapshot
    indexed in the short window between a new Claimed and its marker is not caught here;
    see docs/design.md.)
    """
    highest, valid = 0, []
    for entry in entries:
        if entry.get("marker") == "claimed":
            highest = max(highest, int(entry["epoch"]))
        elif int(entry["epoch"]) >= highest:
            valid.append(entry)
    return valid


class Learner:
    """Owns one model's history: takeover, dedup, Learned records, snapshots."""

    def __init__(self, model: OnlineModel, log_: HistoryLog, index: SnapshotIndex, key: bytes,
                 *, snapshot_every_steps: int, snapshot_every_s: float, id_window: int,
                 probe_size: int, owner: str | None = None,
                 check: ExampleCheck | None = None) -> None:
        self.model = model
        #: validates each example read back from the history before it is learned again
        #: (``streams/effects.py``); what it refuses is counted in ``refused_examples``
        self.check = check
        self.refused_examples = 0
        self.history = log_
        self.index = index
        self.key = key
        self.id_window = id_window
        self.owner = owner or f"{uuid.uuid4().hex[:8]}"
        self.epoch = 0
        self.snapshot_every_steps = snapshot_every_steps
        self.snapshot_every_s = snapshot_every_s
        self.probe_size = probe_size
        self._last_snapshot_seq = 0
        self._last_snapshot_time = time.monotonic()
        self.skipped_replayed = 0
        self.skipped_duplicates = 0
        #: Highest seq whose Learned record the broker has acknowledged.
        self.durable_seq = 0
        #: Input positions covered by acknowledged Learned records.
        self.durable_offsets: dict[str, int] = {}
        #: Set by the history follower when a newer epoch claims this model, and by whom
        #: (``rollback`` or ``another worker``).
        self.fenced = False
        self.fenced_by = ""
        #: Next history offset after our own Claimed (where a follower starts).
        self.history_position = 0
        #: snapshots refused while folding (HMAC) and index entries whose snapshot did
        #: not fit the history; reported once by report_integrity
        self._refused_snapshots: list[tuple[Snapshot, str]] = []
        self._refused: list[tuple[str, str]] = []
        self._reported: set[str] = set()
        self._reported_offsets: set[int] = set()
        #: history records that did not decode (any key), skipped while reading
        self.skipped: list[SkippedRecord] = []
        self.fold = self._new_fold()

    # -- takeover ------------------------------------------------------------------------
    async def restore(self) -> None:
        """Rebuild the model from its history without writing anything (a worker restores
        before it claims: a start that fails later leaves the history untouched)."""
        self.history_position = await self.catch_up()
        self.model.seq, self.model.lineage = self.fold.seq, self.fold.lineage

    async def follow(self) -> int:
        """Fold what was appended since :meth:`restore` (a standby keeping up); returns
        the next history offset."""
        self.history_position = await self._fold_range(self.history_position, None)
        self.model.seq, self.model.lineage = self.fold.seq, self.fold.lineage
        return self.history_position

    async def takeover(self, restored: bool = False) -> None:
        """Restore from the newest snapshot + tail (or, if ``restored``, fold on from
        :meth:`restore`), claim a new epoch, fold up to our claim.

        Also used again after being fenced (a newer Claimed, e.g. by ``riverbed rollback``):
        the state is rebuilt from the history, which then includes the newer owner's records.
        """
        position = await self.follow() if restored else await self.catch_up()
        for _ in range(10):
            epoch = self.fold.epoch + 1
            (offset,) = await self.history.append([self.event(Claimed(self.owner), epoch)])
            position = await self._fold_range(position, offset)
            if self.fold.epoch == epoch:
                self.epoch = epoch
                self.model.seq = self.fold.seq
                self.model.lineage = self.fold.lineage
                self._last_snapshot_seq = self.fold.seq
                self.durable_seq = self.fold.seq
                self.history_position = position
                await self.publish_claim_marker()
                log.info("%s: claimed epoch %d at seq %d", self.model.name, epoch, self.fold.seq)
                await self.report_integrity()
                return
        raise RuntimeError(f"{self.model.name}: could not claim ownership (contended)")

    async def catch_up(self) -> int:
        """Rebuild state from scratch: the newest snapshot that verifies *and* fits the
        history after it, else an older one, else genesis; then the tail to high-water.
        Returns the next history offset. Refused snapshots are remembered for an integrity
        alert once this learner may write (:meth:`report_integrity`)."""
        self.fenced = False
        signed = [e for e in await self.index.entries(self.model.name)
                  if index_entry_ok(e, self.model.name, self.key)]
        entries = list(reversed(valid_entries(signed)))
        for entry in [*entries, None]:
            self.fold = self._new_fold()
            self.model.estimator = build_estimator(self.model.spec)
            start = 0 if entry is None else await self._load_entry(entry)
            if start is None:
                continue
            position = await self._fold_range(start, None)
            counters = self.fold.counters
            if entry is None or (counters.gap_writes == 0 and counters.skipping_claims == 0):
                return position
            # the history after it does not continue from its seq (a gap) or its epoch (a
            # claim two epochs on: it was indexed by a zombie after the next owner claimed)
            self._refused.append((str(entry.get("snapshot_id")), "the history after it "
                                  f"does not continue from its seq {entry['seq']} and "
                                  f"epoch {entry['epoch']}"))
        raise AssertionError("unreachable: genesis always returns")

    def _new_fold(self) -> HistoryFold:
        return HistoryFold(self.model.name, self.id_window,
                           verify=snapshot_verifier(self.key, self._refused_snapshots))

    async def _load_entry(self, entry: Mapping[str, Any]) -> int | None:
        """Load the snapshot an index entry points at; None if it is not there, does not
        verify, or is not what the entry says (garbage or a forged entry)."""
        first, last = entry["offset"], entry["offset"] + entry["chunks"] - 1
        try:
            events = [e async for e in self.history.read(first, last, idle_timeout_s=5.0,
                                                          skipped=self.skipped)]
        except TimeoutError:  # points past the end of the history
            return None
        probe = HistoryFold(self.model.name,
                            verify=snapshot_verifier(self.key, self._refused_snapshots))
        probe.epoch, probe.seq, probe.lineage = entry["epoch"], entry["seq"], entry["lineage"]
        for event in events:
            probe.apply(event)
        if not probe.snapshots:
            return None
        snapshot = probe.snapshots[-1]
        estimator, state = load_snapshot(snapshot, self.key)
        if (state.get("seq"), state.get("lineage")) != (snapshot.seq, snapshot.lineage):
            return None
        self.model.estimator = estimator
        self.fold.import_state(state)
        self.fold.created = await self._created()
        return int(entry["offset"])

    @property
    def rejected_snapshots(self) -> int:
        """Snapshots refused so far (``riverbed_rejected_snapshots_total``)."""
        return len({s.snapshot_id for s, _ in self._refused_snapshots}
                   | {sid for sid, _ in self._refused})

    async def report_integrity(self) -> None:
        """Log each refused snapshot once and record it in the history as
        ``Annotated{kind=integrity}`` (once per snapshot id, across restarts); log each
        undecodable record under this model's key once, with its offset."""
        found = [(s.snapshot_id, reason) for s, reason in self._refused_snapshots]
        found += self._refused
        new = [(sid, reason) for sid, reason in dict(found).items()
               if sid not in self.fold.integrity_notes and sid not in self._reported]
        for snapshot_id, reason in new:
            log.error("%s: INTEGRITY ALERT: snapshot %s refused (%s); restored from the "
                      "history instead", self.model.name, snapshot_id, reason)
            self._reported.add(snapshot_id)
        if new:
            await self.history.append([self.event(Annotated(
                self.fold.seq, "integrity", f"snapshot {sid} refused: {reason}"))
                for sid, reason in new])
        by_reason: dict[str, list[int]] = {}  # one line per reason, not per record
        for skipped in self.skipped:
            if skipped.offset not in self._reported_offsets and \
                    skipped.key == self.model.name.encode():
                by_reason.setdefault(skipped.reason, []).append(skipped.offset)
                self._reported_offsets.add(skipped.offset)
        for reason, offsets in by_reason.items():
            log.error("%s: %d history record(s) skipped (%s) at offset(s) %s%s",
                      self.model.name, len(offsets), reason,
                      ", ".join(map(str, offsets[:10])), ", ..." if len(offsets) > 10 else "")

    async def _created(self) -> Created | None:
        async for event in self.history.read(0, None, skipped=self.skipped):
            if event.model == self.model.name and isinstance(event.body, Created):
                return event.body
        return None

    async def _fold_range(self, start: int, until: int | None) -> int:
        """Fold history events [start, until]; returns the next offset to read."""
        position = start
        batch: list[Any] = []
        steps = 0
        async for event in self.history.read(start, until, skipped=self.skipped):
            effect = self.fold.apply(event)
            if effect is not None:
                batch.append(effect)
                steps += len(effect.examples) if isinstance(effect, Learn) else 1
                if steps >= FOLD_STEPS or len(batch) >= 256:
                    self._apply(batch)
                    batch.clear()
                    steps = 0
                    await asyncio.sleep(0)  # let the worker's pages and heartbeats run
            position = event.offset + 1
        self._apply(batch)
        return position

    def _apply(self, effects: Sequence[Learn | Load]) -> None:
        refused = apply_effects(self.model, effects, self.key, self.check)
        if refused:
            self.refused_examples += refused
            log.error("%s: %d example(s) in the history refused (not learnable by this model: "
                      "riverbed never writes them); skipped", self.model.name, refused)

    # -- the batch protocol ------------------------------------------------------------------
    def should_skip(self, source: str, offset: int) -> bool:
        """True if the history already covers this input offset (step 1 of a replay)."""
        return offset < self.fold.applied_offset(source)

    def record_batch(self, seq_before: int, examples: Sequence[Example],
                     offsets: Mapping[str, int]) -> list[HistoryEvent]:
        """Step 1: the history events for one processed batch, folded into our state (the
        model's first batch also writes ``Created``, its probe the first examples' features)."""
        columns = Examples.of(examples)
        events: list[HistoryEvent] = []
        if self.fold.created is None:
            candidates = tuple(dict(x) for x in columns.xs[: self.probe_size])
            text = spec_json(self.model)
            created = Created(text, hashlib.sha256(text.encode()).hexdigest(),
                              self.model.river_version, candidates)
            events.append(self.event(created))
            self.fold.apply(events[-1])
        probe: tuple[Any, ...] = self.fold.created.probe if self.fold.created else ()
        learned = Learned(seq_before + 1, seq_before + len(examples), dict(offsets),
                          columns, fingerprint(self.model.estimator, probe))
        events.append(self.event(learned))
        self.fold.apply(events[-1])
        return events

    def annotate(self, seq: int, kind: str, note: str) -> HistoryEvent:
        """An Annotated event (drift, promotion, note) for the history."""
        return self.event(Annotated(seq, kind, note))

    def mark_durable(self, events: Sequence[HistoryEvent]) -> None:
        """Step 3 done for ``events``: the broker holds them."""
        for event in events:
            if isinstance(event.body, Learned):
                self.durable_seq = max(self.durable_seq, event.body.seq_to)
                self.durable_offsets.update(event.body.offsets)

    def snapshot_due(self) -> bool:
        """Snapshot every N learn steps or T seconds (whichever first, if anything changed)."""
        steps = self.fold.seq - self._last_snapshot_seq
        return steps >= self.snapshot_every_steps or (
            steps > 0 and time.monotonic() - self._last_snapshot_time >= self.snapshot_every_s)

    def snapshot_events(self, purpose: str = "checkpoint") -> list[HistoryEvent]:
        """Snapshot chunks of the current model (call between batches)."""
        probe = self.fold.created.probe if self.fold.created else ()
        chunks = make_chunks(self.model.estimator, self.fold.export_state(), self.key,
                             purpose=purpose, seq=self.fold.seq, lineage=self.fold.lineage,
                             model_fingerprint=fingerprint(self.model.estimator, probe),
                             model=self.model.name, epoch=self.epoch)
        self._last_snapshot_seq = self.fold.seq
        self._last_snapshot_time = time.monotonic()
        events = [self.event(c) for c in chunks]
        for event in events:
            self.fold.apply(event)
        return events

    async def publish_index(self, events: Sequence[HistoryEvent], offsets: Sequence[int],
                            via: AIOKafkaProducer | None = None) -> None:
        """Point the snapshot index at snapshot chunks just appended at ``offsets`` (``via``:
        the transactional producer, in the transaction that appended them)."""
        chunks = [(e, o) for e, o in zip(events, offsets, strict=True)
                  if isinstance(e.body, SnapshotChunk)]
        if chunks:
            first_event, first_offset = chunks[0]
            body = first_event.body
            assert isinstance(body, SnapshotChunk)
            await self._publish_entry({
                "snapshot_id": body.snapshot_id, "seq": body.seq, "offset": first_offset,
                "chunks": len(chunks), "epoch": first_event.epoch, "lineage": body.lineage},
                via)

    async def publish_claim_marker(self) -> None:
        """Tell the snapshot index that this learner's epoch now owns the model (older
        epochs' snapshot entries published after it are a zombie's: ignored)."""
        await self._publish_entry({"marker": "claimed", "epoch": self.epoch})

    async def _publish_entry(self, entry: dict[str, Any],
                             via: AIOKafkaProducer | None = None) -> None:
        """Publish a signed snapshot-index entry (unsigned or forged entries are ignored)."""
        await self.index.publish(self.model.name,
                                 sign_index_entry(entry, self.model.name, self.key), via)

    def event(self, body: Body, epoch: int | None = None) -> HistoryEvent:
        """A history event of this model, stamped with this learner's epoch (or ``epoch``)."""
        return HistoryEvent(self.model.name, self.epoch if epoch is None else epoch,
                            int(time.time() * 1000), body)


async def rollback(learner: Learner, target_estimator: Any, to_seq: int,
                   reason: str) -> dict[str, Any]:
    """Append a rollback: claim (fencing the live learner), snapshot of the state at
    ``to_seq``, then ``Restored``. The live learner notices the newer epoch, takes over
    again and continues from the restored state with ``lineage + 1``."""
    await learner.catch_up()
    learner.epoch = learner.fold.epoch + 1
    if to_seq > learner.fold.seq:
        raise ValueError(f"cannot roll forward: seq {to_seq} > current seq {learner.fold.seq}")
    probe = learner.fold.created.probe if learner.fold.created else ()
    target_fingerprint = fingerprint(target_estimator, probe)
    chunks = make_chunks(target_estimator, learner.fold.export_state(), learner.key,
                         purpose="rollback", seq=to_seq, lineage=learner.fold.lineage,
                         model_fingerprint=target_fingerprint, model=learner.model.name,
                         epoch=learner.epoch)
    # one append: Claimed (fences the live learner), rollback snapshot, Restored. Followers
    # of a "riverbed-rollback" claim wait for its Restored before taking over again.
    events = [learner.event(Claimed(ROLLBACK_OWNER))]
    events += [learner.event(c) for c in chunks]
    events.append(learner.event(Restored(to_seq, chunks[0].snapshot_id, reason)))
    offsets = await learner.history.append(events)
    await learner.publish_claim_marker()
    for event in events:
        learner.fold.apply(event)
    return {"model": learner.model.name, "to_seq": to_seq, "epoch": learner.epoch,
            "lineage": learner.fold.lineage, "fingerprint": target_fingerprint,
            "restored_offset": offsets[-1]}
