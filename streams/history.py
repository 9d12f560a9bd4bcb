"""The event-sourced model history and its fold. Pure: no Kafka, no Faust, no River.

A model's state is ``fold(history)``. :class:`HistoryFold` is a state machine over
history events; for each event it updates the bookkeeping (seq, epoch, lineage, input
offsets, the window of applied event ids, counters) and returns an *effect* the caller
applies to the actual model: :class:`Learn` (apply these examples in order) or
:class:`Load` (replace the model by this verified snapshot payload). Keeping the model
out of the fold makes the fold cheap to reason about and to property-test.

Fold rules (DESIGN section 4):

* ``Claimed`` with the epoch after the current one becomes the current epoch; any lower
  Claimed is stale and counted. A Claimed that skips epochs is not riverbed's (every claim
  is the epoch after the one its writer folded, so it is either next or stale): ignored
  and counted, so a forged one can neither jump the epoch nor exhaust it.
* ``Learned`` applies only if its epoch is the current epoch and ``seq_from == seq + 1``.
  Otherwise it is a zombie (stale epoch), a duplicate (already covered) or a gap, and is
  ignored and counted. This fences a learner that lost ownership. (A re-sent *empty*
  ``Learned`` -- offsets only -- applies again harmlessly: no examples, same offsets.)
* Snapshot chunks assemble into a snapshot. A ``checkpoint`` snapshot is accepted when
  written in the current epoch and lineage at the current seq; a ``rollback`` snapshot
  when written in the current epoch; and, given a ``verify`` check, only if its HMAC
  (which signs model, epoch, seq and lineage with the payload) holds. A snapshot
  re-appended elsewhere is therefore never accepted, and an accepted one equals the
  state the fold already describes. Snapshots never change state.
* ``Restored`` in the current epoch, naming an accepted rollback snapshot, loads that
  snapshot: ``seq = to_seq``, ``lineage + 1``. Input offsets and the event-id window are
  kept, so examples discarded by the rollback are not learned again on redelivery.
"""

from __future__ import annotations

import array
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

from riverbed.streams.id_window import IdWindow

#: Snapshots whose chunks are being assembled, at most (a snapshot's chunks are appended
#: together; a record that never completes must not hold memory for good).
UNFINISHED_SNAPSHOTS = 4

#: How many applied event ids the dedup window remembers.
DEFAULT_ID_WINDOW = 200_000


class Example(NamedTuple):
    """One learn step: features and label of one event (a row of :class:`Examples`)."""

    event_id: str
    x: Mapping[str, float]
    y: Any


def float_values(packed: bytes | bytearray) -> array.array[float]:
    """The float64 values of ``packed`` (little-endian, as the history stores features)."""
    values = array.array("d")
    values.frombytes(packed)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def unpack_rows(names: Sequence[str], values: Sequence[float], rows: int
                ) -> list[dict[str, float]]:
    """The feature dicts of ``rows`` dense rows: row ``i`` maps ``names`` to
    ``values[i * len(names) : (i + 1) * len(names)]``."""
    width = len(names)
    return [dict(zip(names, values[i * width : (i + 1) * width])) for i in range(rows)]


class Examples(Sequence[Example]):
    """One batch's examples held as columns -- event ids, feature dicts, labels -- which is
    how the learner collects them and the history stores them (``Learned``); a row is an
    :class:`Example` when read. The hot path (the fold's id window, the history encoder)
    reads the columns and never builds a row. Equal to any sequence of the same rows.

    Dense examples (every row has the same features in the same order) may be held packed
    instead (:meth:`dense`): the feature names once and every value as little-endian
    float64, row after row -- the very bytes the history stores. The worker packs each
    example as it learns it, so the batch's feature dicts need not be kept (nor walked
    again, cold in the CPU's caches, to encode them); ``xs`` unpacks them on first use.
    """

    __slots__ = ("_xs", "ids", "names", "packed", "ys")

    def __init__(self, ids: Sequence[str], xs: Sequence[Mapping[str, float]],
                 ys: Sequence[Any]) -> None:
        if not len(ids) == len(xs) == len(ys):
            raise ValueError(f"columns of different lengths: {len(ids)}, {len(xs)}, {len(ys)}")
        self.ids, self.ys = tuple(ids), tuple(ys)
        self._xs: tuple[Mapping[str, float], ...] | None = tuple(xs)
        #: the dense rows' feature names and packed values (:meth:`dense`), else None
        self.names: tuple[str, ...] | None = None
        self.packed: bytes | None = None

    @classmethod
    def dense(cls, ids: Sequence[str], names: Sequence[str], packed: bytes | bytearray,
              ys: Sequence[Any]) -> Examples:
        """Examples whose rows all have ``names`` as features, in that order, with
        ``packed`` holding their values (little-endian float64, row after row)."""
        if len(ids) != len(ys):
            raise ValueError(f"columns of different lengths: {len(ids)}, {len(ys)}")
        if len(packed) != 8 * len(names) * len(ids):
            raise ValueError(f"{len(packed)} packed bytes for {len(ids)} rows of "
                             f"{len(names)} features")
        examples = cls.__new__(cls)
        examples.ids, examples.ys = tuple(ids), tuple(ys)
        examples.names, examples.packed = tuple(names), bytes(packed)
        examples._xs = None
        return examples

    @property
    def xs(self) -> tuple[Mapping[str, float], ...]:
        """Each row's features (unpacked from :attr:`packed` on first use)."""
        if self._xs is None:
            assert self.names is not None and self.packed is not None
            self._xs = tuple(unpack_rows(self.names, float_values(self.packed),
                                         len(self.ids)))
        return self._xs

    @classmethod
    def of(cls, examples: Iterable[Example]) -> Examples:
        """``examples`` as columns (themselves if they already are)."""
        if isinstance(examples, Examples):
            return examples
        rows = tuple(examples)
        return cls([e.event_id for e in rows], [e.x for e in rows], [e.y for e in rows])

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> Examples: ...

    def __getitem__(self, index: int | slice) -> Example | Examples:
        if isinstance(index, slice):
            return Examples(self.ids[index], self.xs[index], self.ys[index])
        return Example(self.ids[index], self.xs[index], self.ys[index])

    def __iter__(self) -> Iterator[Example]:
        return map(Example, self.ids, self.xs, self.ys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Examples):
            return (self.ids, self.xs, self.ys) == (other.ids, other.xs, other.ys)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # holds dicts, like a tuple of Examples

    def __repr__(self) -> str:
        return f"Examples({list(self)!r})"


@dataclasses.dataclass(frozen=True)
class Created:
    spec: str
    spec_hash: str
    river_version: str
    probe: tuple[Mapping[str, float], ...]


@dataclasses.dataclass(frozen=True)
class Claimed:
    owner: str


@dataclasses.dataclass(frozen=True)
class Learned:
    seq_from: int
    seq_to: int
    offsets: Mapping[str, int]
    #: in learn order (:class:`Examples` when written by a learner or read back)
    examples: Sequence[Example]
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class SnapshotChunk:
    snapshot_id: str
    purpose: str  # "checkpoint" | "rollback"
    seq: int
    lineage: int
    index: int
    count: int
    data: bytes
    sha256: str
    hmac: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Restored:
    to_seq: int
    snapshot_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Annotated:
    seq: int
    kind: str
    note: str


Body = Created | Claimed | Learned | SnapshotChunk | Restored | Annotated


@dataclasses.dataclass(frozen=True)
class HistoryEvent:
    """One record of the history topic (``offset`` is its log position, -1 if unknown)."""

    model: str
    epoch: int
    time: int
    body: Body
    offset: int = -1


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An assembled snapshot (payload not yet verified: see ``streams.snapshots``)."""

    snapshot_id: str
    purpose: str
    epoch: int
    seq: int
    lineage: int
    payload: bytes
    sha256: str
    hmac: str
    fingerprint: str
    offset: int  # log offset of the first chunk
    model: str = ""


@dataclasses.dataclass(frozen=True)
class Learn:
    """Effect: apply these examples to the model, in order."""

    examples: Sequence[Example]


@dataclasses.dataclass(frozen=True)
class Load:
    """Effect: replace the model with this snapshot (verify before unpickling!)."""

    snapshot: Snapshot


Effect = Learn | Load


@dataclasses.dataclass
class FoldCounters:
    """What the fold ignored, by why."""

    stale_claims: int = 0
    #: Claimed records that skip epochs (no riverbed writer makes one)
    skipping_claims: int = 0
    stale_writes: int = 0
    duplicate_writes: int = 0
    gap_writes: int = 0
    rejected_snapshots: int = 0
    rejected_restores: int = 0


class HistoryFold:
    """Fold state of one model's history. Feed events with :meth:`apply`, in log order."""

    def __init__(self, model: str, id_window: int = DEFAULT_ID_WINDOW,
                 verify: Callable[[Snapshot], bool] | None = None) -> None:
        self.model = model
        #: integrity check of assembled snapshots (HMAC; see streams.snapshots). A refused
        #: snapshot is ignored: no checkpoint, no rollback target. None: accept (tests).
        self.verify = verify
        #: ids of snapshots the check refused, in log order
        self.refused: list[str] = []
        #: snapshot ids already reported by an ``Annotated{kind=integrity}`` event
        self.integrity_notes: set[str] = set()
        self.seq = 0
        self.epoch = 0
        self.lineage = 0
        self.offsets: dict[str, int] = {}
        self.id_window = id_window
        #: the dedup window: the last ``id_window`` distinct event ids learned
        self.recent_ids = IdWindow(id_window)
        self.created: Created | None = None
        self.fingerprint: str | None = None
        self.counters = FoldCounters()
        self.snapshots: list[Snapshot] = []  # accepted, in log order (payloads dropped but last)
        self._chunks: dict[str, list[tuple[HistoryEvent, SnapshotChunk]]] = {}
        self._rollback: Snapshot | None = None
        self._restored_ids: set[str] = set()

    # -- state that survives in snapshots -------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """The bookkeeping a snapshot must carry so folding can resume from it."""
        return {"seq": self.seq, "epoch": self.epoch, "lineage": self.lineage,
                "offsets": dict(self.offsets), "recent_ids": list(self.recent_ids),
                "fingerprint": self.fingerprint}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`export_state` output (e.g. a verified snapshot)."""
        self.seq, self.epoch = int(state["seq"]), int(state["epoch"])
        self.lineage = int(state["lineage"])
        self.offsets = dict(state["offsets"])
        self.recent_ids = IdWindow(self.id_window, state["recent_ids"])
        self.fingerprint = state.get("fingerprint")

    def signature(self) -> tuple[Any, ...]:
        """Everything that defines the folded state (for comparisons in tests)."""
        return (self.seq, self.epoch, self.lineage, tuple(sorted(self.offsets.items())),
                tuple(self.recent_ids), self.fingerprint)

    # -- the fold ---------------------------------------------------------------------------
    def seen(self, event_id: str) -> bool:
        """Was ``event_id`` applied recently (inside the dedup window)?"""
        return event_id in self.recent_ids.members

    def applied_offset(self, source: str) -> int:
        """Next offset of input ``source`` ('topic:partition') not yet covered (0 if none)."""
        return self.offsets.get(source, 0)

    def apply(self, event: HistoryEvent) -> Effect | None:
        """Fold one event; returns what the caller must do to the model, if anything."""
        if event.model != self.model:
            return None
        body = event.body
        if isinstance(body, Learned):
            return self._learned(event, body)
        if isinstance(body, Claimed):
            if event.epoch == self.epoch + 1:
                self.epoch = event.epoch
            elif event.epoch > self.epoch:
                self.counters.skipping_claims += 1
            else:
                self.counters.stale_claims += 1
        elif isinstance(body, Created):
            if self.created is None:
                self.created = body
        elif isinstance(body, SnapshotChunk):
            self._chunk(event, body)
        elif isinstance(body, Restored):
            return self._restored(event, body)
        elif isinstance(body, Annotated) and body.kind == "integrity":
            self.integrity_notes.add(body.note.split(" ")[1] if " " in body.note else "")
        return None

    def _learned(self, event: HistoryEvent, body: Learned) -> Effect | None:
        if event.epoch != self.epoch:
            self.counters.stale_writes += 1
            return None
        if body.seq_from != self.seq + 1:
            if body.seq_from <= self.seq:
                self.counters.duplicate_writes += 1
            else:
                self.counters.gap_writes += 1
            return None
        self.seq = body.seq_to
        for source, offset in body.offsets.items():
            if offset > self.offsets.get(source, 0):
                self.offsets[source] = offset
        self.recent_ids.extend(Examples.of(body.examples).ids)
        self.fingerprint = body.fingerprint
        return Learn(body.examples) if body.examples else None

    def _chunk(self, event: HistoryEvent, chunk: SnapshotChunk) -> None:
        parts = self._chunks.setdefault(chunk.snapshot_id, [])
        parts.append((event, chunk))
        if len(parts) < chunk.count:
            if len(self._chunks) > UNFINISHED_SNAPSHOTS:  # the oldest begun is dropped
                del self._chunks[next(iter(self._chunks))]
                self.counters.rejected_snapshots += 1
            return
        del self._chunks[chunk.snapshot_id]
        ordered = sorted(parts, key=lambda p: p[1].index)
        if [c.index for _, c in ordered] != list(range(chunk.count)) or any(
            e.epoch != event.epoch for e, _ in ordered
        ):
            self.counters.rejected_snapshots += 1
            return
        snapshot = Snapshot(chunk.snapshot_id, chunk.purpose, event.epoch, chunk.seq,
                            chunk.lineage, b"".join(c.data for _, c in ordered), chunk.sha256,
                            chunk.hmac, chunk.fingerprint, ordered[0][0].offset, event.model)
        current = event.epoch == self.epoch
        rollback = chunk.purpose == "rollback" and current
        checkpoint = (chunk.purpose == "checkpoint" and current and chunk.seq == self.seq
                      and chunk.lineage == self.lineage)
        if not (rollback or checkpoint):  # not at its place: a stale or re-appended copy
            self.counters.rejected_snapshots += 1
        elif self.verify is not None and not self.verify(snapshot):  # tampered / other key
            self.counters.rejected_snapshots += 1
            self.refused.append(snapshot.snapshot_id)
        elif rollback:
            self._rollback = snapshot
        else:
            self.snapshots.append(snapshot)

    def _restored(self, event: HistoryEvent, body: Restored) -> Effect | None:
        snapshot = self._rollback
        if (event.epoch != self.epoch or snapshot is None
                or snapshot.snapshot_id != body.snapshot_id or snapshot.seq != body.to_seq):
            self.counters.rejected_restores += 1
            return None
        self._rollback = None
        if snapshot.snapshot_id in self._restored_ids:  # an authentic rollback re-appended
            self.counters.rejected_restores += 1
            return None
        self._restored_ids.add(snapshot.snapshot_id)
        self.seq = body.to_seq
        self.lineage += 1
        self.fingerprint = snapshot.fingerprint
        return Load(snapshot)


def fold(model: str, events: Iterable[HistoryEvent]) -> tuple[HistoryFold, list[Effect]]:
    """Fold ``events`` from genesis; returns the fold and every effect in order."""
    state = HistoryFold(model)
    effects = [e for e in (state.apply(ev) for ev in events) if e is not None]
    return state, effects


def examples_of(effects: Sequence[Effect]) -> list[Example]:
    """All examples of ``Learn`` effects, in order (ignores loads)."""
    return [x for e in effects if isinstance(e, Learn) for x in e.examples]
