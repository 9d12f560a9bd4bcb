"""Rebuild any past version of a model from its history, verifying fingerprints on the way.

``replay`` folds the history of one model into a fresh River model, from genesis or from
the newest verified snapshot before the target, up to ``to_seq`` / ``to_time`` in a
``lineage`` (default: the live one).
With ``verify``, every fingerprint recorded in a ``Learned`` batch or a snapshot is
recomputed and compared, and every snapshot passed is integrity-checked (HMAC) and its
own fingerprint compared: a mismatch is reported, a tampered snapshot raises
:class:`~streams.snapshots.SnapshotIntegrityError`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from riverbed.schemas import load_schema
from riverbed.streams.config import ModelSettings, Settings
from riverbed.streams.effects import ExampleCheck, apply_effects
from riverbed.streams.errors import HistoryError, UsageError
from riverbed.streams.features import FeatureExtractor
from riverbed.streams.history import (
    Created,
    HistoryEvent,
    HistoryFold,
    Learn,
    Learned,
    Load,
    Snapshot,
    SnapshotChunk,
)
from riverbed.streams.history_codec import UNSIGNED_REASON
from riverbed.streams.history_log import HistoryLog, SkippedRecord
from riverbed.streams.models import OnlineModel
from riverbed.streams.snapshots import (
    SnapshotIntegrityError,
    fingerprint,
    load_snapshot,
    verify_snapshot,
)


@dataclasses.dataclass
class ReplayResult:
    """A rebuilt model and what replay checked."""

    model: OnlineModel
    fold: HistoryFold
    steps: int = 0
    verified: int = 0
    mismatches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: ids of every snapshot whose digest and HMAC were checked (loaded or verified)
    checked: set[str] = dataclasses.field(default_factory=set)
    started_from: str = "genesis"
    seconds: float = 0.0
    #: snapshots refused on the way (skipped: replay fell back to an earlier point)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: undecodable history records keyed with this model's name (offset, reason)
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: validates each recorded example before it is learned again (streams/effects.py)
    check: ExampleCheck | None = None
    #: recorded examples it refused (not learnable by this model: riverbed never writes them)
    refused_examples: int = 0

    @property
    def snapshots_checked(self) -> int:
        """How many distinct snapshots were integrity-checked."""
        return len(self.checked)


def model_spec(settings: Settings, name: str) -> ModelSettings:
    """The spec of model ``name`` (``<spec>@p<N>`` for a per-partition model);
    :class:`UsageError` naming the known models otherwise."""
    base, sep, shard = name.partition("@p")
    spec = next((m for m in settings.models if m.name == base), None)
    if spec is not None and (not sep or (shard.isdigit()
                                         and int(shard) < settings.topics.partitions)):
        return spec
    known = ", ".join(m.name for m in settings.models)
    raise UsageError(f"unknown model {name!r}: the config has {known}"
                     + (" (per partition: <model>@p<N>)" if sep else ""))


async def read_model_history(settings: Settings, model: str, start: int = 0, *,
                             key: bytes | None = None,
                             skipped: list[SkippedRecord] | None = None) -> list[HistoryEvent]:
    """Every history event of ``model`` from offset ``start`` to the high-water mark: with
    ``key``, only records signed with it (as workers read them, unless
    ``history.accept_unsigned_records``); without, every decodable record (inspection).

    Skipped records keyed with ``model``'s name are appended to ``skipped``."""
    if key is None:  # read only (no producer): the signing key is never used
        log = HistoryLog(settings.broker, settings.topics.history, None, b"",
                         accept_unsigned=True)
    else:
        log = HistoryLog.of(settings, None, key)
    every: list[SkippedRecord] = []
    events = [e async for e in log.read(start, None, skipped=every) if e.model == model]
    if skipped is not None:
        skipped.extend(s for s in every if s.key == model.encode())
    return events


def check_signed(model: str, events: Sequence[HistoryEvent],
                 skipped: Sequence[SkippedRecord]) -> None:
    """SnapshotIntegrityError (exit 2) when ``model`` has records but none signed with this
    key: most likely this process has another key than the workers that wrote them (or
    the history predates signed records: ``history.accept_unsigned_records``)."""
    unsigned = sum(s.reason == UNSIGNED_REASON for s in skipped)
    if unsigned and not events:
        raise SnapshotIntegrityError(
            f"HMAC mismatch: none of the {unsigned} history records of {model} is signed "
            "with this key (is history.snapshot_key the workers' key?)")


@dataclasses.dataclass
class _Plan:
    """Where a replay stops and which snapshots lie before that point (bookkeeping fold)."""

    end: int  # events[:end] are folded (the last one possibly only in part)
    lineage: int  # the lineage the target seq is reached in
    checkpoints: list[tuple[int, Snapshot, int]]  # (index completing it, snapshot, epoch)
    rollbacks: list[tuple[int, Snapshot]]  # (index of its Restored, snapshot)
    created: Created | None


def plan(events: Sequence[HistoryEvent], model: str, *, to_seq: int | None = None,
         to_time_ms: int | None = None, lineage: int | None = None) -> _Plan:
    """Fold bookkeeping only (no learning) and decide where a replay to (``lineage``,
    ``to_seq``) and/or ``to_time_ms`` stops; :class:`HistoryError` if the history never
    reached it. ``lineage`` None means the live (newest) lineage.

    Version (L, N) with N below lineage L's restore point is the same state as (L-1, N)
    (a rollback to seq r continues from lineage L-1's state at r), so the target is
    looked up in the oldest lineage that holds it."""
    probe = HistoryFold(model, id_window=1)
    checkpoints: list[tuple[int, Snapshot, int]] = []
    rollbacks: list[tuple[int, Snapshot]] = []
    branch: dict[int, int] = {}  # lineage L >= 1 -> seq it was restored at
    top: dict[int, int] = {0: 0}  # lineage -> highest seq reached
    marks: list[tuple[int, int, int]] = []  # (index, lineage, seq) whenever seq/lineage moved
    created_at = None
    for index, event in enumerate(events):
        seq, line, accepted = probe.seq, probe.lineage, len(probe.snapshots)
        effect = probe.apply(event)
        if probe.created is not None and created_at is None:
            created_at = index
            marks.append((index, 0, 0))
        if len(probe.snapshots) > accepted:
            checkpoints.append((index, probe.snapshots[-1], probe.epoch))
        if isinstance(effect, Load):
            rollbacks.append((index, effect.snapshot))
            branch[probe.lineage] = probe.seq
        if (probe.seq, probe.lineage) != (seq, line):
            marks.append((index, probe.lineage, probe.seq))
            top[probe.lineage] = max(top.get(probe.lineage, 0), probe.seq)
    if created_at is None:
        raise HistoryError(f"model {model!r} has no history")
    live = probe.lineage
    target_lineage = live if lineage is None else lineage
    if not 0 <= target_lineage <= live:
        raise HistoryError(f"model {model!r} has no lineage {target_lineage} "
                           f"(lineages 0..{live})")
    end, reached = len(events), target_lineage
    if to_seq is not None:
        while reached > 0 and to_seq < branch[reached]:
            reached -= 1
        hit = next((n for n, (_, line, seq) in enumerate(marks)
                    if line == reached and seq >= to_seq), None)
        if hit is None:
            raise HistoryError(f"history of {model} only reaches seq {top.get(reached, 0)}"
                               f" in lineage {target_lineage} (asked for seq {to_seq})")
        end = marks[hit][0] + 1
        if marks[hit][2] == to_seq:  # exactly reached: include what follows up to the next
            end = marks[hit + 1][0] if hit + 1 < len(marks) else len(events)  # change
    elif lineage is not None and lineage != live:  # the newest state of an older lineage
        end = max(i for i, line, _ in marks if line == target_lineage) + 1
    if to_time_ms is not None:
        by_time = next((i for i, e in enumerate(events) if e.time > to_time_ms), len(events))
        if by_time <= created_at:
            raise HistoryError(f"model {model!r} did not exist yet at {iso_time(to_time_ms)} "
                               f"(created {iso_time(events[created_at].time)})")
        if to_seq is not None and by_time < end:
            raise HistoryError(f"seq {to_seq} of {model} was not reached by "
                               f"{iso_time(to_time_ms)}")
        if lineage is not None and to_seq is None:
            at_time = max((line for i, line, _ in marks if i < by_time), default=0)
            if at_time != lineage:
                raise HistoryError(f"at {iso_time(to_time_ms)} {model} was in lineage {at_time},"
                                   f" not {lineage}")
        end = min(end, by_time)
    return _Plan(end, reached, checkpoints, rollbacks, probe.created)


def example_check(settings: Settings, model: OnlineModel) -> ExampleCheck:
    """The check of an example read back from ``model``'s history before it is learned
    again (``streams/effects.py``): the model's features and label rule."""
    extractor = FeatureExtractor(load_schema(settings.event.schema, settings.base_dir),
                                 settings.event, model.spec, settings.limits,
                                 binary=model.is_binary)
    return extractor.check_example


def iso_time(ms: int) -> str:
    """``ms`` (epoch milliseconds, as a record carries it) in ISO 8601, UTC; a time no
    calendar date has (any 64-bit value can be read from a topic) as ``<ms> ms``."""
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"


async def replay(
    settings: Settings, model_name: str, key: bytes, *, to_seq: int | None = None,
    to_time_ms: int | None = None, from_genesis: bool = False, verify: bool = False,
    lineage: int | None = None, on_progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Rebuild ``model_name`` as of (``lineage``, ``to_seq``) and/or ``to_time_ms``
    (default: the newest state of the live lineage).

    Starts from the newest checkpoint snapshot before the target (by log position, so by
    seq *and* time), unless ``from_genesis``. A snapshot that fails its integrity check is
    skipped with a warning and replay falls back to an earlier one (or genesis); with
    ``verify`` it raises :class:`SnapshotIntegrityError` instead."""
    spec = model_spec(settings, model_name)
    if to_seq is not None and to_seq < 0:
        raise UsageError(f"--to-seq must be >= 0, got {to_seq}")
    began = time.perf_counter()
    model = OnlineModel(spec, name=model_name)
    result = ReplayResult(model, HistoryFold(model_name, settings.history.id_window),
                          check=example_check(settings, model))
    skipped: list[SkippedRecord] = []
    events = await read_model_history(settings, model_name, key=key, skipped=skipped)
    result.skipped = [{"offset": s.offset, "reason": s.reason} for s in skipped]
    check_signed(model_name, events, skipped)
    target = plan(events, model_name, to_seq=to_seq, to_time_ms=to_time_ms, lineage=lineage)
    start = 0
    if verify:  # every snapshot on the way is integrity-checked, also those we skip
        on_the_way = [(i, s) for i, s, _ in target.checkpoints] + target.rollbacks
        for _, snapshot in sorted((p for p in on_the_way if p[0] < target.end),
                                  key=lambda p: p[0]):
            verify_snapshot(snapshot, key)
            result.checked.add(snapshot.snapshot_id)
    if not from_genesis:
        start = _start_from_snapshot(result, target, key, verify)
    total = to_seq if to_seq is not None else max(
        (e.body.seq_to for e in events[:target.end] if isinstance(e.body, Learned)), default=0)
    for event in events[start:target.end]:
        effect = result.fold.apply(event)
        _apply(result, event, effect, key, to_seq if result.fold.lineage == target.lineage
               else None)
        if verify:
            _verify(result, event, key)
        if on_progress and isinstance(event.body, Learned):
            on_progress(result.fold.seq, total)
    result.model.seq, result.model.lineage = result.fold.seq, result.fold.lineage
    result.seconds = time.perf_counter() - began
    return result


def _start_from_snapshot(result: ReplayResult, target: _Plan, key: bytes, verify: bool) -> int:
    """Load the newest checkpoint snapshot completed before the target (one that fails
    its integrity check is skipped with a warning, or raises with ``verify``); the index
    of the event after it, or 0 (genesis)."""
    for index, snapshot, epoch in reversed(target.checkpoints):
        if index >= target.end:
            continue
        try:
            estimator, fold_state = load_snapshot(snapshot, key)
        except SnapshotIntegrityError as exc:
            if verify:
                raise
            result.warnings.append(f"snapshot {snapshot.snapshot_id[:12]} at seq "
                                   f"{snapshot.seq} refused ({exc}); replayed from an "
                                   "earlier snapshot or genesis")
            continue
        result.checked.add(snapshot.snapshot_id)
        result.model.estimator = estimator
        result.fold.import_state(fold_state)
        result.fold.created = target.created
        result.fold.epoch = epoch
        result.started_from = f"snapshot {snapshot.snapshot_id[:12]} at seq {snapshot.seq}"
        return index + 1
    return 0


def _apply(result: ReplayResult, event: HistoryEvent, effect: Any, key: bytes,
           to_seq: int | None) -> None:
    if isinstance(effect, Learn) and to_seq is not None and isinstance(event.body, Learned):
        keep = max(0, to_seq - event.body.seq_from + 1)
        if keep < len(effect.examples):  # target inside this batch: learn only up to it
            effect = Learn(effect.examples[:keep])
            result.fold.seq = to_seq
            result.fold.fingerprint = None
    if effect is not None:
        result.refused_examples += apply_effects(result.model, [effect], key, result.check)
        if isinstance(effect, Learn):
            result.steps += len(effect.examples)
        else:  # a rollback snapshot, verified by load_snapshot
            result.checked.add(effect.snapshot.snapshot_id)


def _verify(result: ReplayResult, event: HistoryEvent, key: bytes) -> None:
    probe = result.fold.created.probe if result.fold.created else ()
    body = event.body
    if isinstance(body, Learned) and result.fold.fingerprint == body.fingerprint \
            and result.fold.seq == body.seq_to:
        _compare(result, body.seq_to, "Learned", body.fingerprint,
                 fingerprint(result.model.estimator, probe))
    elif isinstance(body, SnapshotChunk) and body.index == body.count - 1 \
            and result.fold.snapshots and result.fold.snapshots[-1].snapshot_id == body.snapshot_id:
        estimator, _ = load_snapshot(result.fold.snapshots[-1], key)  # integrity check
        result.checked.add(body.snapshot_id)
        _compare(result, body.seq, "Snapshot", body.fingerprint, fingerprint(estimator, probe))
        _compare(result, body.seq, "Snapshot vs replay", body.fingerprint,
                 fingerprint(result.model.estimator, probe))


def _compare(result: ReplayResult, seq: int, what: str, recorded: str, actual: str) -> None:
    result.verified += 1
    if recorded != actual:
        result.mismatches.append({"seq": seq, "what": what, "recorded": recorded,
                                  "replayed": actual})
