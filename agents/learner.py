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
the void: the fold ignores its records and counts them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from streams.history import Claimed, Created, Example, HistoryEvent, HistoryFold, Learned
from streams.history_log import HistoryLog, SnapshotIndex
from streams.models import OnlineModel
from streams.replay import apply_effects
from streams.snapshots import fingerprint, load_snapshot, make_chunks

log = logging.getLogger(__name__)


def spec_json(model: OnlineModel) -> str:
    """Canonical JSON of a model spec (for Created and its hash)."""
    spec = model.spec
    return json.dumps({"name": spec.name, "task": spec.task, "seed": spec.seed,
                       "pipeline": list(spec.pipeline), "features": spec.features},
                      sort_keys=True, default=list)


class Learner:
    """Owns one model's history: takeover, dedup, Learned records, snapshots."""

    def __init__(self, model: OnlineModel, log_: HistoryLog, index: SnapshotIndex, key: bytes,
                 *, snapshot_every_steps: int, snapshot_every_s: float, id_window: int,
                 probe_size: int, owner: str | None = None) -> None:
        self.model = model
        self.history = log_
        self.index = index
        self.key = key
        self.fold = HistoryFold(model.name, id_window)
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

    # -- takeover ------------------------------------------------------------------------
    async def takeover(self) -> None:
        """Restore from the newest snapshot + tail, claim a new epoch, fold up to our claim."""
        start = await self._restore_from_index()
        position = await self._fold_range(start, None)
        for _ in range(10):
            epoch = self.fold.epoch + 1
            (offset,) = await self.history.append([self._event(Claimed(self.owner), epoch)])
            position = await self._fold_range(position, offset)
            if self.fold.epoch == epoch:
                self.epoch = epoch
                self.model.seq = self.fold.seq
                self.model.lineage = self.fold.lineage
                self._last_snapshot_seq = self.fold.seq
                self.durable_seq = self.fold.seq
                log.info("%s: claimed epoch %d at seq %d", self.model.name, epoch, self.fold.seq)
                return
        raise RuntimeError(f"{self.model.name}: could not claim ownership (contended)")

    async def _restore_from_index(self) -> int:
        entries = await self.index.entries(self.model.name)
        for entry in reversed(entries):
            events = [e async for e in self.history.read(entry["offset"],
                                                          entry["offset"] + entry["chunks"] - 1)]
            probe = HistoryFold(self.model.name)
            probe.epoch, probe.seq, probe.lineage = entry["epoch"], entry["seq"], entry["lineage"]
            for event in events:
                probe.apply(event)
            if probe.snapshots:
                estimator, state = load_snapshot(probe.snapshots[-1], self.key)
                self.model.estimator = estimator
                self.fold.import_state(state)
                self.fold.created = await self._created()
                return int(entry["offset"])
        return 0

    async def _created(self) -> Created | None:
        async for event in self.history.read(0, None):
            if event.model == self.model.name and isinstance(event.body, Created):
                return event.body
        return None

    async def _fold_range(self, start: int, until: int | None) -> int:
        """Fold history events [start, until]; returns the next offset to read."""
        position = start
        batch: list[Any] = []
        async for event in self.history.read(start, until):
            effect = self.fold.apply(event)
            if effect is not None:
                batch.append(effect)
                if len(batch) >= 256:
                    apply_effects(self.model, batch, self.key)
                    batch.clear()
            position = event.offset + 1
        apply_effects(self.model, batch, self.key)
        return position

    # -- the batch protocol ------------------------------------------------------------------
    def should_skip(self, source: str, offset: int) -> bool:
        """True if the history already covers this input offset (step 1 of a replay)."""
        return offset < self.fold.applied_offset(source)

    def record_batch(self, seq_before: int, examples: list[Example],
                     offsets: Mapping[str, int], probe_candidates: list[Mapping[str, float]]
                     ) -> list[HistoryEvent]:
        """Step 1: the history events for one processed batch, folded into our state."""
        events: list[HistoryEvent] = []
        if self.fold.created is None:
            probe = tuple(dict(x) for x in probe_candidates[: self.probe_size])
            text = spec_json(self.model)
            created = Created(text, hashlib.sha256(text.encode()).hexdigest(),
                              self.model.river_version, probe)
            events.append(self._event(created))
            self.fold.apply(events[-1])
        probe = self.fold.created.probe if self.fold.created else ()
        learned = Learned(seq_before + 1, seq_before + len(examples), dict(offsets),
                          tuple(examples), fingerprint(self.model.estimator, probe))
        events.append(self._event(learned))
        self.fold.apply(events[-1])
        return events

    def mark_durable(self, events: Sequence[HistoryEvent]) -> None:
        """Step 3 done for ``events``: the broker holds them."""
        for event in events:
            if isinstance(event.body, Learned):
                self.durable_seq = max(self.durable_seq, event.body.seq_to)

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
                             model_fingerprint=fingerprint(self.model.estimator, probe))
        self._last_snapshot_seq = self.fold.seq
        self._last_snapshot_time = time.monotonic()
        events = [self._event(c) for c in chunks]
        for event in events:
            self.fold.apply(event)
        return events

    async def publish_index(self, events: Sequence[HistoryEvent], offsets: Sequence[int]) -> None:
        """Point the snapshot index at snapshot chunks just appended at ``offsets``."""
        chunks = [(e, o) for e, o in zip(events, offsets, strict=True)
                  if type(e.body).__name__ == "SnapshotChunk"]
        if chunks:
            first_event, first_offset = chunks[0]
            body: Any = first_event.body
            await self.index.publish(self.model.name, {
                "snapshot_id": body.snapshot_id, "seq": body.seq, "offset": first_offset,
                "chunks": len(chunks), "epoch": first_event.epoch, "lineage": body.lineage})

    def _event(self, body: Any, epoch: int | None = None) -> HistoryEvent:
        return HistoryEvent(self.model.name, self.epoch if epoch is None else epoch,
                            int(time.time() * 1000), body)
